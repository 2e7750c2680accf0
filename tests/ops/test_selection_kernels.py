"""The native CPU selection kernels (topk_threshold, regrow) against the pure-torch references.

Fresh random inputs of many shapes: lists of 1 and 60 tensors with empty and one-element tensors
among them, tensors past one segment (2^20 elements, the unit of the OpenMP split), k = 1 / total /
in between, heavy ties (a few distinct values, many zeros, -0.0 next to +0.0), inf / NaN /
subnormals, fp32 / fp64 / fp16 / bf16; regrow with all-False and nearly-all-True masks, k = 0 and k =
number of inactive positions; 1 and 2 threads; the generic (SSE) ISA in a subprocess; bad inputs
raise errors naming the argument, through the public ops and through the native ops directly.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import granet_kernels
from granet_kernels import ops
from granet_kernels.ops import OPS, reference, select_backend
from granet_testing import seed_for

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SEGMENT = 1 << 20


def _values(shape, gen, dtype, kind):
    n = math.prod(shape)
    if kind == "normal":
        x = torch.randn(n, generator=gen, dtype=torch.float64)
    elif kind == "ties":  # a few distinct magnitudes of both signs, many zeros (both signs)
        levels = torch.tensor([0.0, -0.0, 0.0, 1.5, -1.5, 2.0, -0.25, 3.0], dtype=torch.float64)
        x = levels[torch.randint(0, len(levels), (n,), generator=gen)]
    elif kind == "wide":  # magnitudes over many binades, including subnormals of the dtype
        x = torch.randn(n, generator=gen, dtype=torch.float64) * torch.exp2(
            torch.randint(-150, 60, (n,), generator=gen).to(torch.float64)
        )
    else:
        raise KeyError(kind)
    return x.to(dtype).reshape(shape)


def _topk_native(tensors, k):
    with granet_kernels.backend("cpu"):
        return ops.topk_threshold(tensors, k)


def _check_topk(tensors, k, msg):
    out = _topk_native(tensors, k)
    ref = reference.topk_threshold(tensors, k)
    assert out.dim() == 0 and out.dtype == tensors[0].dtype, msg
    assert torch.equal(out, ref), f"{msg}: threshold {out.item()!r} != reference {ref.item()!r}"
    assert not bool(torch.signbit(out)), f"{msg}: threshold {out.item()!r} has its sign bit set"
    flat = torch.cat([t.reshape(-1).abs() for t in tensors])
    assert int((flat >= out).sum()) >= k > int((flat > out).sum()), msg


def _ks(total, gen):
    picks = {1, total, max(1, total // 10), (total + 1) // 2}
    picks.update(int(v) for v in torch.randint(1, total + 1, (3,), generator=gen))
    return sorted(picks)


# --- topk_threshold -------------------------------------------------------------------------------

LISTS = {
    "one-scalar": [(1,)],
    "one": [(1000,)],
    "with-empty": [(0,), (7,), (0, 3), (3, 5), (1,)],
    "conv-shapes": [(64, 3, 7, 7), (64,), (256, 64, 1, 1), (10, 2048), (10,)],
    "odd-lengths": [(3,), (9,), (17,), (31,), (33,), (65,), (127,)],
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("kind", ["normal", "ties", "wide"])
@pytest.mark.parametrize("shapes", list(LISTS), ids=list(LISTS))
def test_topk_threshold_matches_reference(shapes, kind, dtype):
    gen = torch.Generator().manual_seed(seed_for(f"topk-{shapes}-{kind}-{dtype}"))
    tensors = [_values(s, gen, dtype, kind) for s in LISTS[shapes]]
    total = sum(t.numel() for t in tensors)
    for k in _ks(total, gen):
        _check_topk(tensors, k, f"{shapes} {kind} {dtype} k={k}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_topk_threshold_sixty_tensors(dtype):
    gen = torch.Generator().manual_seed(seed_for(f"topk-60-{dtype}"))
    sizes = torch.randint(0, 3000, (60,), generator=gen).tolist()
    sizes[3] = 0
    sizes[10] = 1
    tensors = [_values((n,), gen, dtype, "normal" if i % 3 else "ties") for i, n in enumerate(sizes)]
    total = sum(sizes)
    for k in _ks(total, gen):
        _check_topk(tensors, k, f"60 tensors {dtype} k={k}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_topk_threshold_past_one_segment(dtype, threads):
    """Several segments per tensor and per thread, k in dense and sparse parts of the histogram."""
    gen = torch.Generator().manual_seed(seed_for(f"topk-big-{dtype}-{threads}"))
    tensors = [
        _values((SEGMENT + 123,), gen, dtype, "normal"),
        _values((5,), gen, dtype, "normal"),
        _values((3, SEGMENT // 3 + 7), gen, dtype, "ties"),
        _values((SEGMENT // 2,), gen, dtype, "wide"),
    ]
    total = sum(t.numel() for t in tensors)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for k in [1, int(0.1 * total), total // 2, total - 17, total]:
            _check_topk(tensors, k, f"big {dtype} threads={threads} k={k}")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_topk_threshold_all_equal_and_zeros(dtype):
    for fill in (0.0, -0.0, 1.0, -2.5):
        tensors = [torch.full((n,), fill, dtype=dtype) for n in (0, 1, 100, 4097)]
        total = sum(t.numel() for t in tensors)
        for k in (1, total // 2, total):
            out = _topk_native(tensors, k)
            assert out.item() == abs(fill) and not bool(torch.signbit(out)), f"fill {fill} k={k}: {out.item()!r}"
    # zeros of both signs are equal magnitudes
    t = torch.tensor([-0.0, 0.0, -0.0, 1.0, -1.0], dtype=dtype)
    for k in range(1, 6):
        _check_topk([t], k, f"signed zeros k={k}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_topk_threshold_inf_and_nan(dtype):
    """inf is a magnitude like any other; NaN counts as the largest magnitude (as in the reference:
    torch.kthvalue orders NaN last)."""
    x = torch.tensor([1.0, -math.inf, 2.0, math.nan, -3.0, math.inf, -math.nan, 0.5], dtype=dtype)
    nan_count = 2
    for k in range(1, x.numel() + 1):
        out = _topk_native([x[:4], x[4:]], k)
        ref = reference.topk_threshold([x[:4], x[4:]], k)
        if k <= nan_count:
            assert bool(torch.isnan(out)) and bool(torch.isnan(ref)), f"k={k}: {out.item()!r}"
        else:
            assert torch.equal(out, ref), f"k={k}: {out.item()!r} != {ref.item()!r}"


def test_topk_threshold_non_contiguous():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(40, 30, generator=gen).t()
    b = torch.randn(100, generator=gen)[::3]
    for k in (1, 50, a.numel() + b.numel()):
        _check_topk([a, b], k, f"non-contiguous k={k}")


def test_cpu_backend_is_the_default_on_cpu():
    tensors, k = [torch.randn(10)], 3
    assert select_backend(OPS["topk_threshold"], (tensors, k)) == "cpu"
    mask = torch.zeros(4, 4, dtype=torch.bool)
    assert select_backend(OPS["regrow"], (mask, torch.randn(4, 4), 3)) == "cpu"


# --- regrow ---------------------------------------------------------------------------------------

def _regrow_native(mask, score, k):
    with granet_kernels.backend("cpu"):
        return ops.regrow(mask, score, k)


def _check_regrow(mask, score, k, msg):
    out = _regrow_native(mask, score, k)
    ref = reference.regrow(mask, score, k)
    assert out.dtype == torch.int64 and out.dim() == 1 and out.numel() == k, msg
    assert torch.equal(out, ref), f"{msg}: {out[:20].tolist()} != reference {ref[:20].tolist()}"


def _mask(shape, gen, density):
    return torch.rand(shape, generator=gen) < density


REGROW_SHAPES = [(1,), (7,), (5, 7), (16, 33), (64, 3, 3, 3), (257, 129)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("kind", ["normal", "ties", "wide"])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 0.97, 1.0])
def test_regrow_matches_reference(density, kind, dtype):
    gen = torch.Generator().manual_seed(seed_for(f"regrow-{density}-{kind}-{dtype}"))
    for shape in REGROW_SHAPES:
        mask = _mask(shape, gen, density)
        score = _values(shape, gen, dtype, kind)
        inactive = int((~mask).sum())
        ks = {0, inactive, inactive // 2, min(1, inactive), max(inactive - 1, 0)}
        for k in sorted(ks):
            _check_regrow(mask, score, k, f"{shape} d={density} {kind} {dtype} k={k}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_regrow_past_one_segment(dtype, threads):
    gen = torch.Generator().manual_seed(seed_for(f"regrow-big-{dtype}-{threads}"))
    shape = (512, 512 * 9 + 5)
    mask = _mask(shape, gen, 0.1)
    score = _values(shape, gen, dtype, "normal")
    score[::7] = 0.0  # ties at zero among the inactive positions
    inactive = int((~mask).sum())
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for k in (1, 12345, inactive // 10, inactive - 3, inactive):
            _check_regrow(mask, score, k, f"big {dtype} k={k}")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_regrow_misleading_sample(dtype):
    """Masks that hide the strided sample's positions, or leave only them open: the sample's estimate
    of the inactive count is wrong and the one-pass bracket must fall back, not mis-select."""
    total = (1 << 16) * 8
    score = torch.randn(total, dtype=dtype)
    mask = torch.zeros(total, dtype=torch.bool)
    mask[4::8] = True
    inactive = int((~mask).sum())
    for k in (1, inactive // 10, inactive):
        _check_regrow(mask, score, k, f"sample masked k={k}")
    mask = torch.ones(total, dtype=torch.bool)
    mask[4::8] = False
    mask[5::64] = False
    inactive = int((~mask).sum())
    for k in (1, inactive // 10, inactive // 2, inactive):
        _check_regrow(mask, score, k, f"only the sample open k={k}")


def test_regrow_ties_go_to_the_lower_index():
    score = torch.tensor([1.0, -1.0, 1.0, 0.0, -1.0, 2.0, -0.0, 1.0])
    mask = torch.tensor([False, False, True, False, False, True, False, False])
    assert _regrow_native(mask, score, 1).tolist() == [0]
    assert _regrow_native(mask, score, 3).tolist() == [0, 1, 4]
    assert _regrow_native(mask, score, 5).tolist() == [0, 1, 3, 4, 7]
    assert _regrow_native(mask, score, 6).tolist() == [0, 1, 3, 4, 6, 7]


def test_regrow_nan_counts_as_largest():
    score = torch.tensor([1.0, math.nan, 3.0, -math.nan, 2.0])
    mask = torch.tensor([False, False, False, True, False])
    for k in range(0, 5):
        _check_regrow(mask, score, k, f"nan k={k}")
    assert _regrow_native(mask, score, 1).tolist() == [1]


def test_regrow_non_contiguous():
    gen = torch.Generator().manual_seed(2)
    score = torch.randn(30, 40, generator=gen).t()
    mask = (torch.rand(30, 40, generator=gen) < 0.3).t()
    _check_regrow(mask, score, 100, "non-contiguous")


# --- the generic ISA ------------------------------------------------------------------------------

_ISA_SCRIPT = r"""
import torch, granet_kernels
from granet_kernels import ops
from granet_kernels.ops import reference
g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float64, torch.float16):
    ts = [torch.randn(n, generator=g).to(dtype) for n in (0, 1, 13, 1000, (1 << 20) + 9)]
    ts.append(torch.randint(-2, 3, (777,), generator=g).to(dtype))
    total = sum(t.numel() for t in ts)
    for k in (1, 100, total // 10, total):
        with granet_kernels.backend("cpu"):
            out = ops.topk_threshold(ts, k)
        assert torch.equal(out, reference.topk_threshold(ts, k)), (dtype, k)
    mask = torch.rand(300, 301, generator=g) < 0.2
    score = torch.randn(300, 301, generator=g).to(dtype).round()
    inactive = int((~mask).sum())
    for k in (0, 1, 999, inactive):
        with granet_kernels.backend("cpu"):
            out = ops.regrow(mask, score, k)
        assert torch.equal(out, reference.regrow(mask, score, k)), (dtype, k)
print("ok")
"""


@pytest.mark.parametrize(
    "env", [{"GRANET_CPU_ISA": "generic"}, {"GRANET_SELECT_BRACKET": "0"}], ids=["generic-isa", "radix-only"]
)
def test_other_paths_subprocess(env):
    """The kernels compiled for the baseline ISA (scalar compress paths), and the two-pass radix
    select with the one-pass bracket turned off."""
    env = dict(os.environ, OMP_NUM_THREADS="2", **env)
    done = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_threshold_misleading_sample(dtype):
    """Data whose strided sample (1 key in total / 2^16, see selection.cpp) sees only zeros, or only
    the largest values: the one-pass bracket misses and the radix select must take over."""
    total = (1 << 16) * 8
    x = torch.randn(total, dtype=dtype).abs() + 1.0
    x[4::8] = 0.0
    for k in (1, total // 10, total // 2, total):
        _check_topk([x], k, f"zeros at the sample k={k}")
    y = torch.rand(total, dtype=dtype)
    y[4::8] = 100.0 + torch.rand(total // 8, dtype=dtype)
    for k in (1, total // 10, total // 2, total):
        _check_topk([y], k, f"large values at the sample k={k}")


# --- bad inputs -----------------------------------------------------------------------------------

NATIVE_TOPK = torch.ops.granet._native_topk_threshold
NATIVE_REGROW = torch.ops.granet._native_regrow
BAD = (ValueError, TypeError, IndexError, RuntimeError)


@pytest.mark.parametrize(
    "args,exc,pattern",
    [
        pytest.param(([], 1), ValueError, r"tensors must be a non-empty list", id="empty-list"),
        pytest.param(([torch.randn(5), torch.randn(3, device="meta")], 1), ValueError, r"tensors\[1\] is on meta", id="meta"),
        pytest.param(([torch.randn(5)], 0), ValueError, r"\bk must be in \[1, 5\].*got 0", id="k-0"),
        pytest.param(([torch.randn(5), torch.randn(0)], 6), ValueError, r"\bk must be in \[1, 5\].*got 6", id="k-big"),
        pytest.param(([torch.randn(0)], 1), ValueError, r"\bk must be in \[1, 0\]", id="all-empty"),
        pytest.param(([torch.randn(5), torch.randn(3).double()], 1), TypeError, r"tensors\[1\] has dtype", id="mixed"),
        pytest.param(([torch.randn(5), torch.arange(3)], 1), TypeError, r"tensors\[1\] must have dtype", id="int"),
        pytest.param(([torch.randn(4, 5).t()], 1), ValueError, r"tensors\[0\] must be contiguous", id="strided"),
    ],
)
def test_native_topk_threshold_rejects(args, exc, pattern):
    with pytest.raises(exc, match=pattern):
        NATIVE_TOPK(*args)


@pytest.mark.parametrize(
    "args,exc,pattern",
    [
        pytest.param((torch.zeros(3, 4, dtype=torch.bool), torch.randn(3, 4), -1), ValueError, r"\bk must be a non-negative", id="k-negative"),
        pytest.param((torch.zeros(3, 4, dtype=torch.bool), torch.randn(3, 4), 13), ValueError, r"\bk = 13 exceeds the number of positions in mask", id="k-over-numel"),
        pytest.param((torch.eye(3, 4, dtype=torch.bool), torch.randn(3, 4), 10), ValueError, r"\bk = 10 exceeds the number of inactive \(False\) positions of mask \(9\)", id="k-over-inactive"),
        pytest.param((torch.zeros(3, 4, dtype=torch.uint8), torch.randn(3, 4), 1), TypeError, r"\bmask must have dtype bool", id="mask-uint8"),
        pytest.param((torch.zeros(3, 4, dtype=torch.bool), torch.ones(3, 4, dtype=torch.int32), 1), TypeError, r"\bscore must have dtype", id="score-int"),
        pytest.param((torch.zeros(3, 4, dtype=torch.bool), torch.randn(4, 3), 1), ValueError, r"\bscore must have mask's shape", id="shape"),
        pytest.param((torch.zeros(3, 4, dtype=torch.bool), torch.randn(4, 3).t(), 1), ValueError, r"\bscore must be contiguous", id="score-strided"),
        pytest.param((torch.zeros(4, 3, dtype=torch.bool).t(), torch.randn(3, 4), 1), ValueError, r"\bmask must be contiguous", id="mask-strided"),
    ],
)
def test_native_regrow_rejects(args, exc, pattern):
    with pytest.raises(exc, match=pattern):
        NATIVE_REGROW(*args)


def test_public_ops_reject_through_cpu_backend():
    with granet_kernels.backend("cpu"):
        with pytest.raises(ValueError, match=r"\bk must be in \[1, 5\]"):
            ops.topk_threshold([torch.randn(5)], 6)
        with pytest.raises(ValueError, match=r"exceeds the number of inactive \(False\) positions of mask"):
            ops.regrow(torch.eye(3, dtype=torch.bool), torch.randn(3, 3), 7)
