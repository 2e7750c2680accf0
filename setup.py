"""Build of granet_kernels._C: C++/OpenMP CPU kernels always, CUDA kernels when possible.

Switches (environment variables):
  GRANET_SKIP_CUDA=1     never build the CUDA sources
  GRANET_REQUIRE_CUDA=1  fail the build instead of skipping the CUDA sources
  TORCH_CUDA_ARCH_LIST   CUDA architectures (default: the visible GPU's, else "8.0;9.0")
  CUDA_HOME              CUDA toolkit root (default: searched, see find_cuda_home)
  MAX_JOBS               parallel compile jobs (ninja)

Source lists are taken from the folders (csrc/*.cpp, csrc/cpu/*.cpp, csrc/cuda/*.cu, and
csrc/python/*.cpp for the Python module), the same way CMakeLists.txt takes them, so the two builds
cannot drift.
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0"


def log(message):
    print(f"[granet_kernels build] {message}", flush=True)


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def find_cuda_home():
    """The first CUDA toolkit root that has nvcc: $CUDA_HOME, $CUDA_PATH, /usr/local/cuda, nvcc on PATH."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return root
    return None


def nvidia_wheel_include_dirs():
    """Headers shipped by the nvidia-* pip wheels (cusparse.h, cublas_v2.h): ATen's CUDAContext.h
    needs them and a bare toolkit may lack them."""
    dirs = []
    for entry in sys.path:
        dirs += glob.glob(os.path.join(entry, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", "include"))
    seen, out = set(), []
    for d in dirs:
        if os.path.isdir(d) and d not in seen and os.path.isfile(os.path.join(d, "cusparse.h")):
            seen.add(d)
            out.append(d)
    return out


def cuda_plan(torch):
    """Decide whether to build the CUDA sources. Returns (build: bool, reason: str)."""
    if env_flag("GRANET_SKIP_CUDA"):
        return False, "GRANET_SKIP_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if not sources("csrc/cuda/*.cu"):
        return False, "no CUDA sources in csrc/cuda"
    cuda_home = find_cuda_home()
    if cuda_home is None:
        return False, "no CUDA toolkit found (set CUDA_HOME, or install one in /usr/local/cuda)"
    # torch's cpp_extension reads CUDA_HOME at import; without it it guesses from nvcc on PATH and
    # the link fails with "cannot find -lcudart".
    os.environ["CUDA_HOME"] = cuda_home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        else:
            # torch raises IndexError when it has neither a GPU nor a list.
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    return True, f"toolkit {cuda_home}, archs {os.environ['TORCH_CUDA_ARCH_LIST']}"


def extensions():
    import torch

    build_cuda, reason = cuda_plan(torch)
    if not build_cuda and env_flag("GRANET_REQUIRE_CUDA"):
        raise SystemExit(f"[granet_kernels build] GRANET_REQUIRE_CUDA=1 but the CUDA build is skipped: {reason}")

    # Imported only now: cpp_extension fixes CUDA_HOME when it is first imported.
    from torch.utils import cpp_extension

    cpu_sources = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp") + sources("csrc/python/*.cpp")
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"]
    # No -march=native: the wheel must run on any x86-64. The kernels pick AVX2 / AVX-512 at run
    # time (per-file target pragmas + cpuid), see csrc/cpu/isa.h.
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    extra = {"cxx": cxx_flags}
    if build_cuda:
        cuda_sources = sources("csrc/cuda/*.cu")
        define_macros.append(("GRANET_WITH_CUDA", "1"))
        include_dirs += nvidia_wheel_include_dirs()
        extra["nvcc"] = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo", "-DGRANET_WITH_CUDA=1"]
        ext_cls = cpp_extension.CUDAExtension
        log(f"building CPU + CUDA kernels ({reason}): {len(cpu_sources)} C++ files, {len(cuda_sources)} CUDA files")
    else:
        cuda_sources = []
        ext_cls = cpp_extension.CppExtension
        log(f"building CPU kernels only; CUDA skipped: {reason}")

    ext = ext_cls(
        name="granet_kernels._C",
        sources=cpu_sources + cuda_sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )
    return [ext], cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


ext_modules, build_ext = extensions()

setup(
    packages=find_packages(include=["granet_kernels", "granet_kernels.*"]),
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
)
