#!/usr/bin/env bash
# The one script a call of the GPU device machine runs (see benchmarks/gpu/README.md).
#
#   benchmarks/gpu/run.sh [all|test|bench]      (default: all)
#
#   all    environment report, build, self-check, GPU test suite, benchmark
#   test   environment report, build, self-check, test suite
#   bench  environment report, build, benchmark
#   cpu    the host CPU alone (the device's Xeon has AVX-512, which the development VM lacks):
#          CPU-only build, the test suite with the GPU hidden and the Triton interpreter on (as
#          CI runs it), then the 1-thread CPU benchmarks, AVX-512 and forced-AVX2 copies side by
#          side; their JSON comes back as $OUT/cpu_bench.tar.gz
#
# Logs and results go to $OUT (default ./gpu_out). Every step runs under `timeout`, and the whole
# call stays inside GPU_RUN_BUDGET seconds (default 540: the device machine allows 600 per command).
#
# GRANET_PREBUILT=<path to a _C*.so.gz written by an earlier call> skips the (slow: ~3-4 min, the
# CPU kernels dominate) build and unpacks that extension instead; only valid for the same sources.
# Every build leaves its extension gzipped in $OUT for that purpose.
#
# GPU_BUILD_CXX=/usr/bin/g++ (GPU_BUILD_CC defaults to the same path with gcc) builds with that
# compiler instead of the image's default c++ (see the native-exception check after the build);
# /usr/bin/g++ is the one that works there.
#
# Environment: BENCH_ARGS (extra arguments for bench_gpu.py), PYTEST_ARGS (extra pytest arguments,
# split on spaces), PYTEST_K_EXPR (a pytest -k expression), PYTEST_WORKERS (default 8), TEST_LIMIT
# (seconds, default 240), GPU_TESTS_DONE (see skip_done.py), DIAG (a script run after the build).
set -u
START=$SECONDS
MODE=${1:-all}
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
BUDGET=${GPU_RUN_BUDGET:-540}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

left() { echo $((BUDGET - (SECONDS - START))); }
say() { echo "[run.sh +$((SECONDS - START))s] $*"; }
# step <log> <seconds> <command...>: runs the command under timeout (SIGINT first, so pytest and
# the benchmark print their summaries), appends its output to $OUT/<log>, returns its status.
step() {
  local log=$1 limit=$2; shift 2
  local avail; avail=$(left)
  if [ "$limit" -gt $((avail - 5)) ]; then limit=$((avail - 5)); fi
  if [ "$limit" -lt 10 ]; then say "SKIPPED (no time left): $*" | tee -a "$OUT/$log"; return 124; fi
  say "start (limit ${limit}s): $*" | tee -a "$OUT/$log"
  timeout -s INT -k 15 "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
  local rc=${PIPESTATUS[0]}
  say "end rc=$rc: $*" | tee -a "$OUT/$log"
  return "$rc"
}

# --- environment -------------------------------------------------------------------------------
{
  say "mode=$MODE budget=${BUDGET}s out=$OUT"
  date -u
  uname -a
  nproc
  grep -m1 "model name" /proc/cpuinfo
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu,persistence_mode,compute_mode --format=csv
  command -v nvcc && nvcc --version | tail -2
  echo "c++: $(command -v c++) $(c++ --version | head -1); g++: $(command -v g++); /usr/bin/g++: $(ls /usr/bin/g++* 2>/dev/null | tr '\n' ' ')"
  python3 - <<'EOF'
import sys, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton: not importable:", e)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, "sm", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count,
          "mem GiB", round(p.total_memory / 2**30, 1), "L2 MB", getattr(p, "L2_cache_size", 0) / 1e6)
else:
    print("torch.cuda.is_available() is False")
EOF
} 2>&1 | tee -a "$OUT/build.log"

# --- build --------------------------------------------------------------------------------------
PY_SUFFIX=$(python3 -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
SO=granet_kernels/_C$PY_SUFFIX
if [ -n "${GRANET_PREBUILT:-}" ] && [ -f "$GRANET_PREBUILT" ]; then
  say "using the prebuilt extension $GRANET_PREBUILT" | tee -a "$OUT/build.log"
  gunzip -c "$GRANET_PREBUILT" > "$SO"
else
  if [ -n "${GPU_BUILD_CXX:-}" ]; then
    # Compiler override: on the device image of 2026-11-25 /usr/bin/g++ links libstdc++ dynamically
    # and native errors then raise normally (see the native-exception check below).
    export CXX="$GPU_BUILD_CXX" CC="${GPU_BUILD_CC:-${GPU_BUILD_CXX/g++/gcc}}"
    export LDSHARED="$CC -shared" LDCXXSHARED="$CXX -shared"
    say "compiler override: CXX=$CXX CC=$CC" | tee -a "$OUT/build.log"
  fi
  if [ "$MODE" = cpu ]; then CUDA_SWITCH=GRANET_SKIP_CUDA=1; else CUDA_SWITCH=GRANET_REQUIRE_CUDA=1; fi
  export "$CUDA_SWITCH"
  TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16} step build.log 360 python3 setup.py build_ext --inplace
  rc=$?
  if [ $rc -ne 0 ] || [ ! -f "$SO" ]; then say "BUILD FAILED (rc=$rc)" | tee -a "$OUT/build.log"; exit 1; fi
  gzip -c "$SO" > "$OUT/_C$PY_SUFFIX.gz"
  ls -la "$SO" "$OUT/_C$PY_SUFFIX.gz" | tee -a "$OUT/build.log"
fi
{
  python3 -c "import granet_kernels as g; print('build_info', g.build_info()); print('backends', g.available_backends())"
  echo "libstdc++ of the extension (none listed: linked statically): $(ldd "$SO" | grep -E 'libstdc|libgcc_s|libgomp' | tr -s ' \t\n' ' ')"
  # A native op's error message must come back as a Python exception. With the device image's
  # default toolchain (2026-11-25) the extension got a static libstdc++ and formatting a number
  # into the message segfaulted (BENCHMARKS.md, GPU section): say so before the tests crash on it.
  python3 -c "
import torch, granet_kernels
i = lambda v: torch.tensor(v, dtype=torch.int32)
try:
    torch.ops.granet._native_csr_spmm(i([0, 1]), i([5]), torch.ones(1), torch.ones(2, 2))
except IndexError as e:
    print('native C++ exceptions: OK')
"
  rc=$?
  [ $rc -eq 0 ] || echo "native C++ exceptions: CRASH (rc=$rc): tests that make a native op raise will kill their worker"
} 2>&1 | tee -a "$OUT/build.log"

if [ -n "${DIAG:-}" ]; then step diag.log 120 bash "$DIAG"; fi

# --- self-check and tests -----------------------------------------------------------------------
if [ "$MODE" = cpu ]; then
  export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1
  SKIP_SELFCHECK=1
fi
if [ "$MODE" = all ] || [ "$MODE" = test ] || [ "$MODE" = cpu ]; then
  [ -n "${SKIP_SELFCHECK:-}" ] || step selfcheck.log 150 python3 -m granet_kernels
  # Each xdist worker gets 2 intra-op threads so the CPU-side tests don't oversubscribe the cores.
  TEST_LIMIT=${TEST_LIMIT:-240}
  PYTEST_K=()
  if [ -n "${PYTEST_K_EXPR:-}" ]; then PYTEST_K=(-k "$PYTEST_K_EXPR"); fi
  # GPU_TESTS_DONE=<tests.xml of an earlier call>: run only what failed or did not run there.
  PYTHONPATH="$PWD/benchmarks/gpu:$PYTHONPATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} \
    step tests.log "$TEST_LIMIT" python3 -m pytest tests -q -n "${PYTEST_WORKERS:-8}" -p skip_done \
    -p no:cacheprovider -rfE --durations=15 --junitxml="$OUT/tests.xml" "${PYTEST_K[@]}" ${PYTEST_ARGS:-}
fi

# --- benchmark ----------------------------------------------------------------------------------
if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  avail=$(left)
  step bench.log $((avail - 10)) python3 benchmarks/gpu/bench_gpu.py --budget-s $((avail - 40)) \
    --out "$OUT/gpu_bench.json" ${BENCH_ARGS:-}
fi
# --- mode cpu: the same tests again with another ISA copy forced, then the host CPU benchmarks ---
# CPU_ALSO_ISA=avx2 (or generic) reruns CPU_ALSO_PATHS (default tests/ops tests/nn) with that copy
# (log tests_<isa>.log); CPU_BENCH=0 skips the benchmarks.
if [ "$MODE" = cpu ] && [ -n "${CPU_ALSO_ISA:-}" ]; then
  # shellcheck disable=SC2086
  GRANET_CPU_ISA=$CPU_ALSO_ISA OMP_NUM_THREADS=2 step "tests_$CPU_ALSO_ISA.log" "$TEST_LIMIT" python3 -m pytest \
    ${CPU_ALSO_PATHS:-tests/ops tests/nn} -q -n "${PYTEST_WORKERS:-8}" -p no:cacheprovider -rfE "${PYTEST_K[@]}"
fi
if [ "$MODE" = cpu ] && [ "${CPU_BENCH:-1}" != 0 ]; then
  R="$OUT/cpu_bench"; mkdir -p "$R"
  for isa in avx512 avx2; do
    GRANET_CPU_ISA=$isa step cpu_bench.log 150 python3 benchmarks/bench_linear.py --quick --threads 1 \
      --layouts csr auto --repeats 5 --out "$R/linear_xeon_$isa.json"
    GRANET_CPU_ISA=$isa step cpu_bench.log 90 python3 benchmarks/bench_conv.py --shapes 3x3-256 \
      --densities 0.1 --threads 1 --batches 1 4 64 --repeats 5 --out "$R/conv_xeon_$isa.json"
    GRANET_CPU_ISA=$isa step cpu_bench.log 90 python3 benchmarks/bench_linear.py --quick --threads 1 \
      --batches 1 8 32 --densities 0.5 0.1 --layouts masked csr --repeats 5 \
      --out "$R/linear_small_batches_xeon_$isa.json"
  done
  tar -czf "$OUT/cpu_bench.tar.gz" -C "$OUT" cpu_bench && rm -rf "$R"
fi
say "done"
