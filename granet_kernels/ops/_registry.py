"""One place that turns an op's parts (checks, reference, kernels, fake, FLOP formula) into the
torch.ops.granet.<name> registrations, and picks the backend at call time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch.utils.flop_counter import register_flop_formula

from granet_kernels import backends

NAMESPACE = "granet"


@dataclass(frozen=True)
class Kernel:
    """One backend's implementation of an op. `dtypes`: the floating dtypes it accepts (None: any)."""

    fn: Callable[..., Any]
    dtypes: tuple[torch.dtype, ...] | None = None


@dataclass
class OpDef:
    name: str
    check: Callable[..., None]  # shapes, dtypes, devices: valid under FakeTensor too
    check_values: Callable[..., None] | None  # index ranges etc.: real tensors only
    reference: Callable[..., Any]
    fake: Callable[..., Any]
    kernels: dict[str, Kernel] = field(default_factory=dict)
    # Preference of "auto" on CUDA tensors (CPU tensors: cpu, then reference).
    cuda_order: tuple[str, ...] = ("cuda", "triton", "reference")
    dtype_of: Callable[..., torch.dtype | None] | None = None

    @property
    def qualname(self) -> str:
        return f"{NAMESPACE}::{self.name}"

    @property
    def op(self):
        return getattr(getattr(torch.ops, NAMESPACE), self.name)


OPS: dict[str, OpDef] = {}


def _first_tensor(args: Sequence[Any]) -> torch.Tensor | None:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
        if isinstance(a, (list, tuple)):
            found = _first_tensor(a)
            if found is not None:
                return found
    return None


def _data_dtype(opdef: OpDef, args: Sequence[Any]) -> torch.dtype | None:
    if opdef.dtype_of is not None:
        return opdef.dtype_of(*args)
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.dtype
    return None


def _supports(kernel: Kernel, dtype: torch.dtype | None) -> bool:
    return kernel.dtypes is None or dtype is None or dtype in kernel.dtypes


def select_backend(opdef: OpDef, args: Sequence[Any]) -> str:
    """The backend that runs this call: the forced one (checked), else the first of auto's order
    that exists for this op, runs on this device and accepts this dtype."""
    first = _first_tensor(args)
    device = first.device if first is not None else torch.device("cpu")
    dtype = _data_dtype(opdef, args)
    forced = backends.current_backend()
    if forced != "auto":
        kernel = opdef.kernels.get(forced)
        if kernel is None:
            raise backends.BackendUnavailableError(
                f"{opdef.qualname} has no {forced!r} kernel (it has: {', '.join(opdef.kernels)})"
            )
        if not backends.device_accepts(forced, device):
            raise backends.BackendUnavailableError(
                f"{opdef.qualname}: backend {forced!r} cannot run on {device.type} tensors"
                + (" (set TRITON_INTERPRET=1 to run Triton on the CPU)" if forced == "triton" else "")
            )
        if not _supports(kernel, dtype):
            names = ", ".join(str(d).replace("torch.", "") for d in kernel.dtypes or ())
            raise backends.BackendUnavailableError(
                f"{opdef.qualname}: the {forced!r} kernel does not take dtype {dtype} (it takes {names})"
            )
        return forced
    order = ("cpu", "reference") if device.type == "cpu" else opdef.cuda_order
    for name in order:
        kernel = opdef.kernels.get(name)
        if (
            kernel is not None
            and backends.device_accepts(name, device)
            and backends.unavailable_reason(name) is None
            and _supports(kernel, dtype)
        ):
            return name
    return "reference"


def _dispatch(opdef: OpDef, *args):
    opdef.check(*args)
    if opdef.check_values is not None:
        opdef.check_values(*args)
    return opdef.kernels[select_backend(opdef, args)].fn(*args)


def register_op(
    name: str,
    *,
    check: Callable[..., None],
    reference: Callable[..., Any],
    fake_output: Callable[..., Any],
    flops: Callable[..., int],
    check_values: Callable[..., None] | None = None,
    kernels: dict[str, Kernel] | None = None,
    cuda_order: tuple[str, ...] = ("cuda", "triton", "reference"),
    dtype_of: Callable[..., torch.dtype | None] | None = None,
) -> OpDef:
    """Register the CPU/CUDA dispatch (checks + backend choice), the fake impl (checks + output
    allocation) and the FLOP formula of the op whose schema ops.cpp defines."""

    def fake(*args):
        check(*args)
        return fake_output(*args)

    all_kernels = {"reference": Kernel(reference)}
    all_kernels.update(kernels or {})
    opdef = OpDef(name, check, check_values, reference, fake, all_kernels, cuda_order, dtype_of)
    OPS[name] = opdef

    torch.library.register_fake(opdef.qualname)(fake)

    def impl(*args):
        return _dispatch(opdef, *args)

    impl.__name__ = f"{name}_dispatch"
    torch.library.impl(opdef.qualname, ["cpu", "cuda"], impl)

    def flop_formula(*args, out_val=None, **kwargs):
        return int(flops(*args))

    register_flop_formula(opdef.op, get_raw=True)(flop_formula)
    return opdef


def nnz_of_mask(mask: torch.Tensor) -> int:
    """Nonzero count of a mask for FLOP formulas; the dense count where values are unknown (fake)."""
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(mask, FakeTensor) or mask.device.type == "meta":
        return mask.numel()
    return int(torch.count_nonzero(mask))
