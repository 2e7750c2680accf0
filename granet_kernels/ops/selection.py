"""Selection ops of the pruning engine: the global magnitude threshold and per-layer regrowth."""

from __future__ import annotations

from typing import Sequence

import torch

from granet_kernels.ops import _checks as C
from granet_kernels.ops import reference
from granet_kernels.ops._registry import Kernel, register_op

# The native CPU kernels (csrc/cpu/selection.cpp): radix select on the magnitudes' bit patterns, two
# passes over the data, no concatenation. They take contiguous tensors: the wrappers below make
# non-contiguous ones contiguous (a copy) first. NaN counts as the largest magnitude, as in the
# reference (torch.kthvalue / torch.sort order NaN last).
NATIVE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _native_topk_threshold(tensors, k):
    return torch.ops.granet._native_topk_threshold([t.contiguous() for t in tensors], k)


def _native_regrow(mask, score, k):
    return torch.ops.granet._native_regrow(mask.contiguous(), score.contiguous(), k)


def _check_topk(tensors, k):
    op = "granet::topk_threshold"
    if not isinstance(tensors, (list, tuple)) or len(tensors) == 0:
        raise ValueError(f"{op}: tensors must be a non-empty list of tensors")
    for i, t in enumerate(tensors):
        C.tensor(op, f"tensors[{i}]", t, dtypes=C.FLOAT_DTYPES)
    named = [(f"tensors[{i}]", t) for i, t in enumerate(tensors)]
    C.same_device(op, named)
    C.same_dtype(op, named)
    total = sum(t.numel() for t in tensors)
    if not isinstance(k, int) or k < 1 or k > total:
        raise ValueError(f"{op}: k must be in [1, {total}] (the total element count of tensors), got {k}")


topk_threshold_def = register_op(
    "topk_threshold",
    check=_check_topk,
    reference=reference.topk_threshold,
    fake_output=lambda tensors, k: tensors[0].new_empty(()),
    # Selection does no multiply-adds; its work is one comparison per element.
    flops=lambda tensors, k: sum(t.numel() for t in tensors),
    dtype_of=lambda tensors, k: tensors[0].dtype,
    kernels={"cpu": Kernel(_native_topk_threshold, NATIVE_DTYPES)},
)


@torch.library.impl(topk_threshold_def.qualname, "CompositeExplicitAutograd")
def _topk_threshold_without_device(tensors, k):
    """An empty list has no tensor to pick a kernel by: the dispatcher sends it here (the
    Undefined key resolves to CompositeExplicitAutograd) rather than raising its own
    NotImplementedError, so the op's check can name the bad argument. The CPU and CUDA kernels
    registered by register_op take precedence for every non-empty list."""
    _check_topk(tensors, k)
    raise NotImplementedError(f"granet::topk_threshold has no kernel for {tensors[0].device.type} tensors")


def _check_regrow(mask, score, k):
    op = "granet::regrow"
    C.tensor(op, "mask", mask, dtypes=(torch.bool,))
    C.tensor(op, "score", score, dtypes=C.FLOAT_DTYPES)
    if mask.shape != score.shape:
        raise ValueError(f"{op}: score must have mask's shape {tuple(mask.shape)}, got {tuple(score.shape)}")
    C.same_device(op, [("mask", mask), ("score", score)])
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"{op}: k must be a non-negative integer, got {k!r}")
    if k > mask.numel():
        raise ValueError(f"{op}: k = {k} exceeds the number of positions in mask ({mask.numel()})")


def _check_regrow_values(mask, score, k):
    inactive = mask.numel() - int(torch.count_nonzero(mask))
    if k > inactive:
        raise ValueError(f"granet::regrow: k = {k} exceeds the number of inactive (False) positions of mask ({inactive})")


regrow_def = register_op(
    "regrow",
    check=_check_regrow,
    check_values=_check_regrow_values,
    reference=reference.regrow,
    fake_output=lambda mask, score, k: mask.new_empty(k, dtype=torch.int64),
    flops=lambda mask, score, k: mask.numel(),
    dtype_of=lambda mask, score, k: score.dtype,
    kernels={"cpu": Kernel(_native_regrow, NATIVE_DTYPES)},
)


def topk_threshold(tensors: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th largest |value| over all `tensors` (0-d tensor), without concatenating them.

    Keeping the k largest magnitudes globally means keeping |w| >= threshold (ties at the
    threshold are broken by the caller, by index)."""
    return torch.ops.granet.topk_threshold(list(tensors), int(k))


def regrow(mask: torch.Tensor, score: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices (int64, ascending) of the k largest |score| where mask is False; ties go to the
    lower index, so every rank and every resumed run picks the same positions."""
    return torch.ops.granet.regrow(mask, score, int(k))
