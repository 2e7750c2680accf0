"""Helpers of the granet_kernels test suite (imported by conftest.py and the test modules)."""

from __future__ import annotations

import importlib
import zlib
from typing import Any, Sequence

import pytest
import torch

from granet_kernels import backends
from granet_kernels.ops import OpDef

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")

# Floating dtypes tested per device; half precision only where the kernels are meant to run it
# (and where the Triton interpreter, which gets bf16 wrong, is not involved).
FLOAT_DTYPES = {"cpu": [torch.float32, torch.float64], "cuda": [torch.float32, torch.float64, torch.float16, torch.bfloat16]}

# (rtol, atol per unit of the reference's largest magnitude); the reference is computed in float64.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}

# Modules a backend's kernels live in: while one does not exist yet, that backend's tests skip.
BACKEND_MODULES = {"triton": ("triton", "granet_kernels.triton.masked_matmul")}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def seed_for(test_id: str) -> int:
    return zlib.crc32(test_id.encode()) & 0x7FFFFFFF


def backends_to_test(opdef: OpDef, device: str | torch.device) -> list[str]:
    """The backends of `opdef` that run on this machine and take tensors on `device`."""
    device = torch.device(device)
    return [
        name
        for name in opdef.kernels
        if backends.unavailable_reason(name) is None and backends.device_accepts(name, device)
    ]


def skip_unless_backend_runs(name: str) -> None:
    """Skip (with the reason) when a backend's kernel modules cannot be imported yet."""
    reason = backends.unavailable_reason(name)
    if reason is not None:
        pytest.skip(f"backend {name!r} is not available: {reason}")
    for module in BACKEND_MODULES.get(name, ()):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name is not None and module.startswith(error.name):
                pytest.skip(f"backend {name!r}: {module} does not exist yet ({error})")
            raise


def map_tensors(args: Any, fn) -> Any:
    """Apply fn to every tensor of a (nested list/tuple of) argument(s)."""
    if isinstance(args, torch.Tensor):
        return fn(args)
    if isinstance(args, tuple):
        return tuple(map_tensors(a, fn) for a in args)
    if isinstance(args, list):
        return [map_tensors(a, fn) for a in args]
    return args


def tensors_of(args: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    map_tensors(args, found.append)
    return found


def to_float64(args: Sequence[Any]) -> tuple:
    """The same arguments with every floating tensor cast to float64 (index and bool tensors kept)."""
    return map_tensors(tuple(args), lambda t: t.to(torch.float64) if t.is_floating_point() else t)


def clone_args(args: Sequence[Any]) -> tuple:
    return map_tensors(tuple(args), lambda t: t.detach().clone())


def requires_grad_floats(args: Sequence[Any], names: Sequence[int] | None = None) -> tuple:
    """Fresh leaves that require grad for the floating tensors (all, or the positions in `names`)."""
    out = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.is_floating_point() and (names is None or i in names):
            a = a.detach().clone().requires_grad_()
        out.append(a)
    return tuple(out)


def assert_unchanged(args: Sequence[Any], before: Sequence[Any], what: str = "") -> None:
    """The op did not write into its inputs."""
    for now, then in zip(tensors_of(args), tensors_of(before)):
        assert torch.equal(now, then), f"{what}: an input tensor was modified in place"


def assert_close_to_reference(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, msg: str = "") -> None:
    """`out` (computed in `dtype`) against a reference computed in float64 from the same inputs.

    rtol is the dtype's; atol scales with the reference's magnitude, since every output is a sum of
    products whose rounding error grows with the size of its terms, not of the result.
    """
    assert out.dtype == dtype, f"{msg}: output dtype {out.dtype}, expected {dtype}"
    assert out.shape == ref.shape, f"{msg}: output shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
    rtol, atol = TOLERANCES[dtype]
    ref = ref.to(torch.float64)
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    torch.testing.assert_close(
        out.to(torch.float64), ref, rtol=rtol, atol=atol * scale, msg=lambda m: f"{msg} ({dtype_name(dtype)}): {m}"
    )
