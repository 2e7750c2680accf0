#!/usr/bin/env bash
# Configure, build and test the CMake build of granet_kernels (CMakeLists.txt: libgranet_kernels.so
# and the C++ tests under tests/cpp), for CI and for local checks.
#
#   scripts/cmake_test.sh [BUILD_DIR] [extra cmake configure arguments...]
#
#   BUILD_DIR  default build/cmake (under the repository root); a relative path is taken from the
#              current directory
#   PYTHON     the Python whose torch is built against (default: python3 on PATH); its bin folder
#              goes first on PATH, so a virtual environment's ninja / cmake are used
#   JOBS       parallel build jobs (default: the number of CPUs)
# Example: PYTHON=.venv/bin/python scripts/cmake_test.sh build/cmake-cuda -DGRANET_WITH_CUDA=ON
# Exits non-zero when configuring, building or any test fails, or when no test ran.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build/cmake}"
[ $# -gt 0 ] && shift
mkdir -p "$build"
build="$(cd "$build" && pwd)"

python="${PYTHON:-python3}"
if [[ "$python" == */* ]]; then
  # Absolute, without resolving symlinks: a venv's python is a symlink to the base interpreter.
  [ -x "$python" ] || { echo "cmake_test: PYTHON=$python is not an executable" >&2; exit 1; }
  python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
else
  python="$(command -v "$python")" || { echo "cmake_test: $python not found on PATH" >&2; exit 1; }
fi
export PATH="$(dirname "$python"):$PATH"
"$python" -c "import torch" || { echo "cmake_test: $python cannot import torch" >&2; exit 1; }

generator=()
if command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

start=$SECONDS
step_start=$SECONDS
step_done() { echo "=== cmake_test: $1 took $((SECONDS - step_start)) s"; step_start=$SECONDS; }

echo "=== cmake_test: configure $build (python $python)"
cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$python" "$@"
step_done configure

echo "=== cmake_test: build (-j$jobs)"
cmake --build "$build" -j "$jobs"
step_done build

echo "=== cmake_test: ctest"
(cd "$build" && ctest --output-on-failure --no-tests=error)
step_done ctest

echo "=== cmake_test: passed in $((SECONDS - start)) s"
