"""granet_kernels: GraNet sparse training on real sparse kernels for PyTorch.

Layers (each imports only from below): _native (the compiled _C) -> backends -> ops -> triton
kernels -> formats -> nn -> pruning -> train.
"""

from granet_kernels import _native
from granet_kernels.backends import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    backend,
    current_backend,
)
from granet_kernels import ops
from granet_kernels.ops import topk_threshold
from granet_kernels.nn import SparseConv2d, SparseLinear, densify_, sparsify_
from granet_kernels.pruning import GraNet, GraNetConfig

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "BackendUnavailableError", "available_backends", "backend", "current_backend",
    "ops", "topk_threshold", "build_info", "SparseLinear", "SparseConv2d", "sparsify_", "densify_",
    "GraNet", "GraNetConfig",
]


def build_info() -> dict:
    """What the native extension was built with (cuda, cpu_isa, compiler)."""
    return dict(_native.BUILD_INFO)
