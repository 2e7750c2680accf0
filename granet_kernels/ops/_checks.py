"""Input checks shared by the ops. Every message names the op and the argument."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from granet_kernels.ops._index import csr_rows

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


def version_token(*tensors: torch.Tensor) -> tuple | None:
    """What identifies the contents of these tensors for a cache kept beside them: in-place changes
    bump _version, rebinding .data changes data_ptr. None for inference tensors, which track no
    version (inside inference_mode they change in place unseen): never cache those."""
    for t in tensors:
        if t.is_inference():
            return None
    return tuple([(t._version, t.data_ptr(), t.numel()) for t in tensors])


def remembered(holder: torch.Tensor, attr: str, tensors: Sequence[torch.Tensor], extra=None) -> bool:
    """Whether `remember(holder, attr, tensors, extra)` ran since any of `tensors` last changed (the
    same objects, versions, addresses and sizes) with the same `extra`."""
    seen = getattr(holder, attr, None)
    if seen is None or len(seen[0]) != len(tensors):
        return False
    for a, b in zip(seen[0], tensors):
        if a is not b:
            return False
    token = version_token(*tensors)
    return token is not None and seen[1] == token and seen[2] == extra


def remember(holder: torch.Tensor, attr: str, tensors: Sequence[torch.Tensor], extra=None) -> None:
    """Record on `holder` that a check of `tensors` passed (nothing for inference tensors)."""
    token = version_token(*tensors)
    if token is not None:
        try:
            setattr(holder, attr, (tuple(tensors), token, extra))
        except (AttributeError, RuntimeError):  # tensor subclasses that refuse attributes
            pass


def compressed_index_values(op: str, ptr_name: str, ptr: torch.Tensor, idx_name: str, idx: torch.Tensor, bound: int):
    """Values of a compressed index: ptr starts at 0, never decreases, ends at nnz; 0 <= idx < bound.

    A pair that passed is remembered on the index tensor, so the index a sparse module builds once
    per mask change is not re-read on every call (it is re-checked after any in-place change). The
    record holds ptr itself: another ptr tensor, even at the same address, is checked afresh."""
    if remembered(idx, "_granet_checked", (ptr, idx), int(bound)):
        return
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
    remember(idx, "_granet_checked", (ptr, idx), int(bound))


def index_range(op: str, name: str, idx: torch.Tensor, bound: int):
    if idx.numel() == 0 or remembered(idx, "_granet_range_checked", (idx,), int(bound)):
        return
    lo, hi = (int(v) for v in torch.aminmax(idx))
    if lo < 0 or hi >= bound:
        bad = lo if lo < 0 else hi
        raise IndexError(f"{op}: {name} holds {bad}, out of range [0, {bound})")
    remember(idx, "_granet_range_checked", (idx,), int(bound))


def permutation(op: str, name: str, perm: torch.Tensor, n: int):
    """perm holds every integer of [0, n) once. Remembered on perm like the index checks: the
    index a module builds is read once per mask change, not per call."""
    if remembered(perm, "_granet_permutation_checked", (perm,), int(n)):
        return
    index_range(op, name, perm, n)
    hit = torch.zeros(n, dtype=torch.bool, device=perm.device).index_fill_(0, perm.long(), True)
    if perm.numel() != n or not bool(hit.all()):
        raise ValueError(f"{op}: {name} must be a permutation of [0, {n}) (each stored position once); "
                         "build it with transpose_index")
    remember(perm, "_granet_permutation_checked", (perm,), int(n))


def transposed_index(op: str, crow: torch.Tensor, col: torch.Tensor, ccol: torch.Tensor, row: torch.Tensor,
                     perm: torch.Tensor):
    """(ccol_indices, row_indices, perm) is the CSC index of the CSR pattern (crow_indices,
    col_indices): CSC slot s is the nonzero at CSR position perm[s], in row row[s] and in the column
    whose slots it lies among. Both indices must have passed compressed_index_values."""
    index = (crow, col, ccol, row, perm)
    if remembered(perm, "_granet_transpose_checked", index):
        return
    permutation(op, "perm", perm, col.numel())
    p = perm.long()
    csr_row, csc_col = csr_rows(crow, col.numel()), csr_rows(ccol, row.numel())  # the column of each CSC slot
    if not (bool((csr_row[p] == row.long()).all()) and bool((col.long()[p] == csc_col).all())):
        raise ValueError(f"{op}: ccol_indices, row_indices and perm are not the transposed index of crow_indices and "
                         "col_indices (build them with transpose_index)")
    remember(perm, "_granet_transpose_checked", index)


def positive_ints(op: str, name: str, values: Sequence[int], count: int, *, minimum: int = 1):
    if len(values) != count or any(int(v) < minimum for v in values):
        raise ValueError(f"{op}: {name} must be {count} integers >= {minimum}, got {list(values)}")
