"""Loads the compiled extension granet_kernels._C (op schemas + native kernels)."""

import torch  # noqa: F401  (loads libc10/libtorch, which _C links against)

try:
    from granet_kernels import _C
except ImportError as error:  # pragma: no cover - only without a build
    raise ImportError(
        "granet_kernels._C is not built or does not load: install the package with "
        "`pip install --no-build-isolation -e .` (see README.md). Cause: " + str(error)
    ) from error

BUILD_INFO: dict = dict(_C.build_info())


def built_with_cuda() -> bool:
    return bool(BUILD_INFO.get("cuda"))


def cpu_isa() -> str:
    """The CPU instruction set the native kernels run with (avx512, avx2 or generic)."""
    return str(BUILD_INFO.get("cpu_isa"))
