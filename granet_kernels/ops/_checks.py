"""Input checks shared by the ops. Every message names the op and the argument."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32,)


def tensor(op: str, name: str, t, *, dim: int | None = None, dtypes: Iterable[torch.dtype] | None = None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{op}: {name} must be {dim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{op}: {name} must have dtype {names}; got {str(t.dtype).replace('torch.', '')}")


def same_device(op: str, named: Sequence[tuple[str, torch.Tensor | None]]):
    ref_name, ref = named[0]
    for name, t in named[1:]:
        if t is not None and t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; put them on one device")


def same_dtype(op: str, named: Sequence[tuple[str, torch.Tensor | None]]):
    ref_name, ref = named[0]
    for name, t in named[1:]:
        if t is not None and t.dtype != ref.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; they must match")


def size(op: str, name: str, t: torch.Tensor, dim: int, expected: int, why: str):
    if t.shape[dim] != expected:
        raise ValueError(f"{op}: {name}.shape[{dim}] must be {expected} ({why}), got shape {tuple(t.shape)}")


def compressed_index(op: str, ptr_name: str, ptr: torch.Tensor, idx_name: str, idx: torch.Tensor):
    """Shapes and dtypes of a compressed (CSR/CSC/BSR) index pair."""
    tensor(op, ptr_name, ptr, dim=1, dtypes=INDEX_DTYPES)
    tensor(op, idx_name, idx, dim=1, dtypes=INDEX_DTYPES)
    if ptr.numel() < 1:
        raise ValueError(f"{op}: {ptr_name} must have at least one entry (rows + 1), got an empty tensor")
    same_device(op, [(ptr_name, ptr), (idx_name, idx)])


def _validation_key(ptr: torch.Tensor, idx: torch.Tensor, bound: int) -> tuple:
    # In-place changes bump _version; rebinding .data changes data_ptr.
    return (ptr.data_ptr(), ptr._version, ptr.numel(), idx.data_ptr(), idx._version, idx.numel(), int(bound))


def compressed_index_values(op: str, ptr_name: str, ptr: torch.Tensor, idx_name: str, idx: torch.Tensor, bound: int):
    """Values of a compressed index: ptr starts at 0, never decreases, ends at nnz; 0 <= idx < bound.

    A pair that passed is remembered on the index tensor, so the index a sparse module builds once
    per mask change is not re-read on every call (it is re-checked after any in-place change)."""
    key = _validation_key(ptr, idx, bound)
    if getattr(idx, "_granet_checked", None) == key:
        return
    _compressed_index_values(op, ptr_name, ptr, idx_name, idx, bound)
    try:
        idx._granet_checked = key
    except (AttributeError, RuntimeError):  # tensor subclasses that refuse attributes
        pass


def _compressed_index_values(op, ptr_name, ptr, idx_name, idx, bound):
    nnz = idx.numel()
    first, last = int(ptr[0]), int(ptr[-1])
    if first != 0:
        raise ValueError(f"{op}: {ptr_name}[0] must be 0, got {first}")
    if last != nnz:
        raise ValueError(f"{op}: {ptr_name}[-1] must equal len({idx_name}) = {nnz}, got {last}")
    if ptr.numel() > 1 and bool((ptr[1:] < ptr[:-1]).any()):
        bad = int(torch.nonzero(ptr[1:] < ptr[:-1])[0])
        raise ValueError(f"{op}: {ptr_name} must be non-decreasing; {ptr_name}[{bad}] > {ptr_name}[{bad + 1}]")
    index_range(op, idx_name, idx, bound)


def index_range(op: str, name: str, idx: torch.Tensor, bound: int):
    if idx.numel() == 0:
        return
    key = (idx.data_ptr(), idx._version, idx.numel(), int(bound))
    if getattr(idx, "_granet_range_checked", None) == key:
        return
    lo, hi = (int(v) for v in torch.aminmax(idx))
    if lo < 0 or hi >= bound:
        bad = lo if lo < 0 else hi
        raise IndexError(f"{op}: {name} holds {bad}, out of range [0, {bound})")
    try:
        idx._granet_range_checked = key
    except (AttributeError, RuntimeError):
        pass


def positive_ints(op: str, name: str, values: Sequence[int], count: int, *, minimum: int = 1):
    if len(values) != count or any(int(v) < minimum for v in values):
        raise ValueError(f"{op}: {name} must be {count} integers >= {minimum}, got {list(values)}")
