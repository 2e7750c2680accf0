"""Random-case checks of the small-batch CPU paths against pure-torch reference semantics:

1. the masked-dense small-batch kernels (`_native_masked_linear_small` / `_native_masked_backward_small`,
   reached through `masked_matmul` and `SparseLinear(layout="masked")` at small batches);
2. SparseConv2d with the CSR layout at stride 1 and small batches ("pixel lanes over zero-padded
   planes": batch <= 4 fp32 / <= 2 fp64 on AVX2; the backward also needs padding <= the taps' reach).

Random shapes are drawn from seeded generators (fixed per test), references are computed in float64.
Tolerances: fp32 rtol 1e-5, atol 1e-5 * sqrt(reduction length); fp64 rtol 1e-10, atol 1e-10 * sqrt(length).
"""

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import granet_kernels as gk
from granet_kernels import ops
from granet_kernels.ops import masked as masked_ops
from granet_kernels.ops.samples import random_csr

LIN = torch.ops.granet._native_masked_linear_small
BWD = torch.ops.granet._native_masked_backward_small

SIZES = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 1000, 1024, 1025]
DTYPES = [torch.float32, torch.float64]
THREADS = [1, 2, 3, 4]


@pytest.fixture
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _tol(dtype, length):
    scale = math.sqrt(max(1, length))
    if dtype == torch.float32:
        return dict(rtol=1e-5, atol=1e-5 * scale)
    return dict(rtol=1e-10, atol=1e-10 * scale)


def _close(got, want, dtype, length):
    """got (dtype) against a float64 reference."""
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want.double(), **_tol(dtype, length))


def _huge(dtype):
    return 3e38 if dtype == torch.float32 else 1e308


# ------------------------------------------------------------------------------------------------
# 1. masked-dense small batches: the native ops
# ------------------------------------------------------------------------------------------------


def _masked_case(rnd, gen, dtype, n, M, K):
    mode = rnd.choice(["none", "all", "rand", "rand"])
    if mode == "none":
        mask = torch.zeros(M, K, dtype=torch.bool)
    elif mode == "all":
        mask = torch.ones(M, K, dtype=torch.bool)
    else:
        mask = torch.rand(M, K, generator=gen) < rnd.choice([0.05, 0.5, 0.95])
    outside = rnd.choice([float("nan"), float("inf"), -float("inf"), -0.0, _huge(dtype), -_huge(dtype), 3.0])
    weight = torch.randn(M, K, generator=gen, dtype=torch.float64).to(dtype).masked_fill(~mask, outside)
    if rnd.random() < 0.3:  # transposed view: the op makes it contiguous
        x = torch.randn(K, n, generator=gen, dtype=torch.float64).to(dtype).t()
    else:
        x = torch.randn(n, K, generator=gen, dtype=torch.float64).to(dtype)
    if rnd.random() < 0.3:
        dy = torch.randn(M, n, generator=gen, dtype=torch.float64).to(dtype).t()
    else:
        dy = torch.randn(n, M, generator=gen, dtype=torch.float64).to(dtype)
    bias = torch.randn(M, generator=gen, dtype=torch.float64).to(dtype) if rnd.random() < 0.5 else None
    return x, weight, mask, bias, dy


@pytest.mark.parametrize("threads", THREADS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_small_native_ops_random(dtype, threads):
    rnd = random.Random(1000 + threads + 10 * (dtype == torch.float64))
    gen = torch.Generator().manual_seed(rnd.randrange(1 << 30))
    cases = 0
    while cases < 60:
        n, M, K = rnd.randint(0, 40), rnd.choice(SIZES), rnd.choice(SIZES)
        if M * K > 70_000:
            continue
        cases += 1
        x, weight, mask, bias, dy = _masked_case(rnd, gen, dtype, n, M, K)
        where = f"n={n} M={M} K={K} {dtype} threads={threads} bias={bias is not None}"
        wm = torch.where(mask, weight, 0).double()
        y = LIN(x, weight, mask, bias)
        assert y.shape == (n, M), where
        want = x.double() @ wm.t() + (bias.double() if bias is not None else 0)
        _close(y, want, dtype, K)
        need_dx, need_dw = rnd.choice([(True, True), (True, False), (False, True), (False, False)])
        w_arg = weight if (need_dx or rnd.random() < 0.5) else None
        dx, dw = BWD(dy, x, w_arg, mask, need_dx, need_dw)
        if need_dx:
            assert dx.shape == (n, K), where
            _close(dx, dy.double() @ wm, dtype, M)
        else:
            assert dx.numel() == 0, where
        if need_dw:
            assert dw.shape == (M, K), where
            _close(dw, torch.where(mask, dy.double().t() @ x.double(), 0), dtype, n)
            outside = dw[~mask]
            assert not outside.any() and not outside.signbit().any(), where  # exact +0 outside the mask
        else:
            assert dw.numel() == 0, where


@pytest.mark.parametrize("threads", [1, 3], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, M, K", [(2, 3, 20_003), (1, 20_001, 1), (3, 7001, 3), (40, 1025, 1025), (1, 5, 1024)])
def test_masked_small_native_ops_extreme_aspect(n, M, K, dtype, threads):
    gen = torch.Generator().manual_seed(n * 7 + M + K)
    x = torch.randn(n, K, generator=gen, dtype=dtype)
    mask = torch.rand(M, K, generator=gen) < 0.5
    weight = torch.randn(M, K, generator=gen, dtype=dtype).masked_fill(~mask, float("nan"))
    dy = torch.randn(n, M, generator=gen, dtype=dtype)
    wm = torch.where(mask, weight, 0).double()
    _close(LIN(x, weight, mask, None), x.double() @ wm.t(), dtype, K)
    dx, dw = BWD(dy, x, weight, mask, True, True)
    _close(dx, dy.double() @ wm, dtype, M)
    _close(dw, torch.where(mask, dy.double().t() @ x.double(), 0), dtype, n)


def test_masked_small_native_ops_on_offset_views():
    """Contiguous views with a storage offset (row slices) of x, weight, mask and bias."""
    gen = torch.Generator().manual_seed(5)
    xb = torch.randn(7, 19, generator=gen)
    wb = torch.randn(20, 19, generator=gen)
    mb = torch.rand(20, 19, generator=gen) < 0.5
    wb[~mb] = float("nan")
    bb = torch.randn(30, generator=gen)
    x, w, m, b = xb[2:5], wb[3:14], mb[3:14], bb[5:16]
    assert w.is_contiguous() and m.is_contiguous() and w.storage_offset() > 0
    wm = torch.where(m, w, 0).double()
    _close(LIN(x, w, m, b), x.double() @ wm.t() + b.double(), torch.float32, 19)
    dy = torch.randn(9, 11, generator=gen)[4:7]
    dx, dw = BWD(dy, x, w, m, True, True)
    _close(dx, dy.double() @ wm, torch.float32, 11)
    _close(dw, torch.where(m, dy.double().t() @ x.double(), 0), torch.float32, 3)


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
def test_masked_small_backward_is_bitwise_repeatable(threads):
    gen = torch.Generator().manual_seed(9)
    mask = torch.rand(300, 500, generator=gen) < 0.5
    weight = torch.randn(300, 500, generator=gen)
    x, dy = torch.randn(5, 500, generator=gen), torch.randn(5, 300, generator=gen)
    first = BWD(dy, x, weight, mask, True, True)
    for _ in range(3):
        again = BWD(dy, x, weight, mask, True, True)
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 3, 9, 17])
def test_masked_small_forward_nonfinite_x_meets_masked_weight_like_reference(K, dtype):
    """x[b, k] = inf where mask[:, k] is False: the reference gives inf * 0 = NaN (vector and tail columns alike)."""
    gen = torch.Generator().manual_seed(K)
    M = 5
    mask = torch.rand(M, K, generator=gen) < 0.5
    mask[:, -1] = False
    weight = torch.randn(M, K, generator=gen, dtype=dtype)
    x = torch.randn(2, K, generator=gen, dtype=dtype)
    x[0, -1] = float("inf")
    y = LIN(x, weight, mask, None)
    want = x @ torch.where(mask, weight, 0).t()
    assert torch.equal(y.isnan(), want.isnan())


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_small_backward_nonfinite_dy_tail_matches_reference(dtype):
    # Minimal: n=1, M=1, K=1 (all of K is tail for any vector width), mask all False, dy = inf.
    weight = torch.tensor([[2.0]], dtype=dtype)
    mask = torch.zeros(1, 1, dtype=torch.bool)
    x = torch.ones(1, 1, dtype=dtype)
    dy = torch.tensor([[float("inf")]], dtype=dtype)
    dx, _ = BWD(dy, x, weight, mask, True, False)
    want = dy @ torch.where(mask, weight, 0)  # [[nan]]
    assert want.isnan().all()
    assert torch.equal(dx.isnan(), want.isnan()), f"dx={dx.tolist()} want={want.tolist()}"


def test_masked_small_backward_nonfinite_dy_vector_columns_match_reference():
    """The vectorised columns and the tail column alike follow the reference (inf * 0 = NaN).
    K = 65: 64 columns in whole vectors for any ISA (<= 16 fp32 lanes), one tail column."""
    weight = torch.ones(2, 65)
    mask = torch.zeros(2, 65, dtype=torch.bool)
    mask[1] = True
    dy = torch.tensor([[float("inf"), 1.0]])
    dx, _ = BWD(dy, torch.ones(1, 65), weight, mask, True, False)
    want = dy @ torch.where(mask, weight, 0)
    assert want.isnan().all()
    assert dx.isnan().all()


# --- error handling of the native ops ---------------------------------------------------------------


def _ops_args(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=gen, dtype=dtype)
    w = torch.randn(4, 5, generator=gen, dtype=dtype)
    m = torch.rand(4, 5, generator=gen) < 0.5
    b = torch.randn(4, generator=gen, dtype=dtype)
    dy = torch.randn(3, 4, generator=gen, dtype=dtype)
    return x, w, m, b, dy


LINEAR_BAD = [
    ("x 1-D", lambda x, w, m, b: (x[0], w, m, b), r"x must be 2-D"),
    ("x 3-D", lambda x, w, m, b: (x[None], w, m, b), r"x must be 2-D"),
    ("x half", lambda x, w, m, b: (x.half(), w.half(), m, b.half()), r"x must be float32 or float64"),
    ("weight fp64", lambda x, w, m, b: (x, w.double(), m, b), r"weight dtype"),
    ("weight int", lambda x, w, m, b: (x, w.int(), m, b), r"weight dtype"),
    ("weight 1-D", lambda x, w, m, b: (x, w[0], m, b), r"weight's shape"),
    ("weight K", lambda x, w, m, b: (x[:, :4], w, m, b), r"x.shape\[1\]"),
    ("weight transposed", lambda x, w, m, b: (x, torch.randn(5, 4).t(), m, b), r"weight must be a contiguous"),
    ("mask uint8", lambda x, w, m, b: (x, w, m.to(torch.uint8), b), r"mask must be a 2-D bool"),
    ("mask 3-D", lambda x, w, m, b: (x, w[None], m[None], b), r"mask must be a 2-D bool"),
    ("mask shape", lambda x, w, m, b: (x, w, m[:, :4].contiguous(), b), r"mask must have weight's shape"),
    ("bias 2-D", lambda x, w, m, b: (x, w, m, b[None]), r"bias must be"),
    ("bias short", lambda x, w, m, b: (x, w, m, b[:3]), r"bias must be"),
    ("bias fp64", lambda x, w, m, b: (x, w, m, b.double()), r"bias must be"),
]


@pytest.mark.parametrize("name, mutate, pattern", LINEAR_BAD, ids=[c[0] for c in LINEAR_BAD])
def test_masked_linear_small_rejects_bad_arguments(name, mutate, pattern):
    x, w, m, b, _ = _ops_args()
    with pytest.raises(ValueError, match=pattern):
        LIN(*mutate(x, w, m, b))


BACKWARD_BAD = [
    ("dy 1-D", lambda dy, x, w, m: (dy[0], x, w, m, True, True), r"dy must be 2-D"),
    ("dy fp64", lambda dy, x, w, m: (dy.double(), x, w, m, True, True), r"dtype"),
    ("dy columns", lambda dy, x, w, m: (dy[:, :3], x, w, m, True, True), r"dy.shape\[1\]"),
    ("x fp64", lambda dy, x, w, m: (dy, x.double(), w, m, True, True), r"x must be a CPU tensor of dy's dtype"),
    ("x int", lambda dy, x, w, m: (dy, x.int(), None, m, False, True), r"x must be float32 or float64"),
    ("x 1-D", lambda dy, x, w, m: (dy, x[0], w, m, True, True), r"x must be 2-D"),
    ("x rows", lambda dy, x, w, m: (dy, x[:2], None, m, False, True), r"x and dy must have the same batch size"),
    ("x columns", lambda dy, x, w, m: (dy, x[:, :4], w, m, True, True), r"x.shape\[1\] must be mask.shape\[1\]"),
    ("weight None with dx", lambda dy, x, w, m: (dy, x, None, m, True, False), r"dx needs the weight"),
    ("weight fp64", lambda dy, x, w, m: (dy, x, w.double(), m, True, True), r"weight dtype"),
    ("weight shape", lambda dy, x, w, m: (dy, x, w[:, :4].contiguous(), m, True, True), r"mask must have weight's shape"),
    ("weight transposed", lambda dy, x, w, m: (dy, x, torch.randn(5, 4).t(), m, True, True), r"weight must be a contiguous"),
    ("mask 1-D", lambda dy, x, w, m: (dy, x, None, m[0], False, True), r"mask must be a 2-D bool"),
    ("mask transposed", lambda dy, x, w, m: (dy, x, None, m.t().contiguous().t(), False, True), r"mask must be contiguous"),
]


@pytest.mark.parametrize("name, mutate, pattern", BACKWARD_BAD, ids=[c[0] for c in BACKWARD_BAD])
def test_masked_backward_small_rejects_bad_arguments(name, mutate, pattern):
    x, w, m, _, dy = _ops_args()
    with pytest.raises(ValueError, match=pattern):
        BWD(*mutate(dy, x, w, m))


@pytest.mark.parametrize("which", ["x", "weight", "mask", "bias"])
def test_masked_native_ops_refuse_meta_operands(which):
    x, w, m, b, dy = _ops_args()
    args = dict(x=x, weight=w, mask=m, bias=b)
    args[which] = args[which].to("meta")
    with pytest.raises((ValueError, NotImplementedError, RuntimeError)):
        LIN(args["x"], args["weight"], args["mask"], args["bias"])
    if which != "bias":
        with pytest.raises((ValueError, NotImplementedError, RuntimeError)):
            BWD(dy, args["x"], args["weight"], args["mask"], True, True)


MM_BAD = [
    ("x", lambda x, w, m, b: (x[0], w, m, b), ValueError, r"\bx\b"),
    ("weight", lambda x, w, m, b: (x, w.double(), m, b), TypeError, r"weight"),
    ("mask", lambda x, w, m, b: (x, w, m[:, :4], b), ValueError, r"mask"),
    ("mask", lambda x, w, m, b: (x, w, m.float(), b), TypeError, r"mask"),
    ("bias", lambda x, w, m, b: (x, w, m, b[:3]), ValueError, r"bias"),
    ("bias", lambda x, w, m, b: (x, w, m, b.double()), TypeError, r"bias"),
    ("weight", lambda x, w, m, b: (x[:, :4], w, m, b), ValueError, r"weight"),
    ("weight", lambda x, w, m, b: (x, w.to("meta"), m, b), ValueError, r"weight is on meta"),
    ("mask", lambda x, w, m, b: (x, w, m.to("meta"), b), ValueError, r"mask is on meta"),
]


@pytest.mark.parametrize("name, mutate, exc, pattern", MM_BAD)
def test_masked_matmul_small_batch_errors_name_the_argument(name, mutate, exc, pattern):
    x, w, m, b, _ = _ops_args()
    with pytest.raises(exc, match=pattern):
        ops.masked_matmul(*mutate(x, w, m, b))


# --- masked_matmul / SparseLinear autograd --------------------------------------------------------


def test_masked_matmul_small_batches_take_the_new_kernels():
    """Guards the premise of the tests below: batch <= 8 reaches the one-pass kernels."""
    x = torch.randn(8, 33, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 33, dtype=torch.float64, requires_grad=True)
    m = torch.rand(9, 33) < 0.5
    assert masked_ops._small_batch(x, w, m)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ops.masked_matmul(x, w, m, None).sum().backward()
    called = {e.name for e in prof.events()}
    assert {"granet::_native_masked_linear_small", "granet::_native_masked_backward_small"} <= called


@pytest.mark.parametrize("threads", [1, 2, 4], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_matmul_autograd_random(dtype, threads):
    rnd = random.Random(77 + threads + 100 * (dtype == torch.float64))
    gen = torch.Generator().manual_seed(rnd.randrange(1 << 30))
    for _ in range(40):
        n, M, K = rnd.randint(0, 12), rnd.choice([1, 2, 3, 7, 8, 9, 17, 33, 64]), rnd.choice(SIZES[:13])
        x, weight, mask, bias, dy = _masked_case(rnd, gen, dtype, n, M, K)
        rx, rw = rnd.random() < 0.7, rnd.random() < 0.7
        rb = bias is not None and rnd.random() < 0.7
        leaves = [t.detach().clone().requires_grad_(r) if t is not None else None
                  for t, r in ((x, rx), (weight, rw), (bias, rb))]
        refs = [t.detach().double().requires_grad_(r) if t is not None else None
                for t, r in ((x, rx), (weight, rw), (bias, rb))]
        y = ops.masked_matmul(leaves[0], leaves[1], mask, leaves[2])
        yr = F.linear(refs[0], torch.where(mask, refs[1], 0), refs[2])
        _close(y.detach(), yr.detach(), dtype, K)
        if not y.requires_grad:
            continue
        if rnd.random() < 0.3:  # an expanded (stride-0) gradient
            y.sum().backward()
            yr.sum().backward()
        else:
            y.backward(dy)
            yr.backward(dy.double())
        where = f"n={n} M={M} K={K} {dtype} needs={(rx, rw, rb)}"
        if rx:
            _close(leaves[0].grad, refs[0].grad, dtype, M)
        if rw:
            _close(leaves[1].grad, refs[1].grad, dtype, n)
            outside = leaves[1].grad[~mask]
            assert not outside.any() and not outside.signbit().any(), where
        if rb:
            _close(leaves[2].grad, refs[2].grad, dtype, n)


@pytest.mark.parametrize("threads", [1, 3], indirect=True)
@pytest.mark.parametrize("batch", [9, 32])
def test_masked_matmul_large_weight_batches_up_to_32(batch, threads):
    M, K = 1025, 4097  # numel 4_199_425 > 2**22: batches up to 32 take the small-batch kernels
    gen = torch.Generator().manual_seed(batch)
    mask = torch.rand(M, K, generator=gen) < 0.5
    weight = torch.randn(M, K, generator=gen).masked_fill(~mask, float("nan")).requires_grad_()
    x = torch.randn(batch, K, generator=gen, requires_grad=True)
    bias = torch.randn(M, generator=gen, requires_grad=True)
    assert masked_ops._small_batch(x, weight, mask)
    y = ops.masked_matmul(x, weight, mask, bias)
    dy = torch.randn(batch, M, generator=gen)
    y.backward(dy)
    wm = torch.where(mask, weight.detach(), 0).double()
    _close(y.detach(), x.detach().double() @ wm.t() + bias.detach().double(), torch.float32, K)
    _close(x.grad, dy.double() @ wm, torch.float32, M)
    _close(weight.grad, torch.where(mask, dy.double().t() @ x.detach().double(), 0), torch.float32, batch)
    assert not weight.grad[~mask].any()
    _close(bias.grad, dy.double().sum(0), torch.float32, batch)


@pytest.mark.parametrize("n, M, K", [(1, 3, 5), (2, 9, 4), (3, 5, 9), (0, 3, 2), (5, 1, 1), (8, 4, 17)])
def test_masked_matmul_gradcheck_small_batches(n, M, K):
    gen = torch.Generator().manual_seed(n + 10 * M + 100 * K)
    mask = torch.rand(M, K, generator=gen) < 0.5
    w = torch.randn(M, K, generator=gen, dtype=torch.float64).masked_fill(~mask, 0).requires_grad_()
    x = torch.randn(n, K, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(M, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.masked_matmul(x, w, mask, b), (x, w, b))


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_linear_masked_layout_random_batches(dtype, threads):
    rnd = random.Random(31 + threads + 10 * (dtype == torch.float64))
    for i in range(24):
        n, fin, fout = rnd.randint(0, 40), rnd.choice([1, 3, 9, 17, 33, 64]), rnd.choice([1, 2, 8, 9, 31])
        dense = nn.Linear(fin, fout, bias=rnd.random() < 0.7).to(dtype)
        layer = gk.SparseLinear.from_dense(dense, density=rnd.choice([0.0, 0.1, 0.5, 1.0]), layout="masked",
                                           generator=torch.Generator().manual_seed(i))
        assert layer.layout == "masked"
        ref_w = (layer.weight.detach() * layer.weight_mask).double().requires_grad_()
        ref_b = layer.bias.detach().double().requires_grad_() if layer.bias is not None else None
        shape = rnd.choice([(n, fin), (2, n, fin), (fin,)])
        x = torch.randn(*shape, dtype=dtype)
        xs, xr = x.clone().requires_grad_(), x.double().requires_grad_()
        ys, yr = layer(xs), F.linear(xr, ref_w, ref_b)
        _close(ys.detach(), yr.detach(), dtype, fin)
        dy = torch.randn(yr.shape, dtype=dtype)
        ys.backward(dy)
        yr.backward(dy.double())
        length = max(1, x.numel() // fin)
        _close(xs.grad, xr.grad, dtype, fout)
        _close(layer.weight.grad, ref_w.grad * layer.weight_mask, dtype, length)
        assert not layer.weight.grad[~layer.weight_mask].any()
        if layer.bias is not None:
            _close(layer.bias.grad, ref_b.grad, dtype, length)
        with torch.no_grad():
            _close(layer(x), yr.detach(), dtype, fin)


# ------------------------------------------------------------------------------------------------
# 2. SparseConv2d, CSR layout, stride 1, small batches
# ------------------------------------------------------------------------------------------------


def _dense_filter(crow, col, values, c_out, c_in, kh, kw):
    rows = torch.repeat_interleave(torch.arange(c_out), (crow[1:] - crow[:-1]).long())
    w = torch.zeros(c_out, c_in * kh * kw, dtype=torch.float64)
    w[rows, col.long()] = values.double()
    return w.reshape(c_out, c_in, kh, kw), rows


def _check_conv(x, crow, col, values, ks, pad, dil, bias, grad, where):
    """Forward, fused backward, dx and dw ops against F.conv2d in float64 and its autograd."""
    dtype = x.dtype
    n, c_in = x.shape[:2]
    c_out = crow.numel() - 1
    kh, kw = ks
    wd, rows = _dense_filter(crow, col, values, c_out, c_in, kh, kw)
    xr = x.detach().double().requires_grad_()
    wr = wd.clone().requires_grad_()
    yr = F.conv2d(xr, wr, bias.double() if bias is not None else None, 1, pad, dil)
    red_fwd = c_in * kh * kw
    y = ops.sparse_conv2d(x, crow, col, values, ks, (1, 1), pad, dil, bias)
    assert y.shape == yr.shape, where
    _close(y, yr.detach(), dtype, red_fwd)
    if grad is None:
        grad = torch.randn(yr.shape, dtype=dtype)
    yr.backward(grad.double())
    gv_ref = wr.grad.reshape(c_out, -1)[rows, col.long()]
    red_dw = n * yr.shape[2] * yr.shape[3]
    gi, gv = ops.sparse_conv2d_backward(grad, x, crow, col, values, ks, (1, 1), pad, dil)
    _close(gi, xr.grad, dtype, c_out * kh * kw)
    _close(gv, gv_ref, dtype, red_dw)
    _close(ops.sparse_conv2d_dx(grad, crow, col, values, list(x.shape), ks, (1, 1), pad, dil), xr.grad, dtype,
           c_out * kh * kw)
    _close(ops.sparse_conv2d_dw(grad, x, crow, col, ks, (1, 1), pad, dil), gv_ref, dtype, red_dw)


@pytest.mark.parametrize("threads", THREADS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_conv2d_stride1_small_batches_random(dtype, threads):
    rnd = random.Random(4242 + threads + 10 * (dtype == torch.float64))
    gen = torch.Generator().manual_seed(rnd.randrange(1 << 30))
    half = 4 if dtype == torch.float32 else 2
    cases = 0
    while cases < 36:
        n = rnd.choice(list(range(1, half + 1)) * 3 + [half + 1, 6])
        kh = rnd.randint(1, 7)
        kw = kh if rnd.random() < 0.4 else rnd.randint(1, 7)
        dh, dw = (1, 1) if rnd.random() < 0.5 else (rnd.randint(1, 3), rnd.randint(1, 3))
        ph, pw = rnd.randint(0, 4), rnd.randint(0, 4)
        h = rnd.choice([1, 2, 3, 5, 7, 13, 17, rnd.randint(1, 20)])
        w = rnd.choice([1, 2, 3, 5, 7, 13, 17, rnd.randint(1, 20)])
        if h + 2 * ph - dh * (kh - 1) < 1 or w + 2 * pw - dw * (kw - 1) < 1:
            continue
        c_in, c_out = rnd.choice([1, 2, 3, 5, 8, 17, 40]), rnd.choice([1, 2, 3, 5, 8, 17, 40])
        if n * c_in * h * w > 40_000 or c_in * c_out * kh * kw > 20_000:
            continue
        cases += 1
        density = rnd.choice([0.0, 0.05, 0.5, 1.0])
        empty_rows = rnd.choice([0, 0, 1, c_out // 2])
        crow, col, values = random_csr(c_out, c_in * kh * kw, density, gen=gen, dtype=dtype, empty_rows=empty_rows)
        x = torch.randn(n, c_in, h, w, generator=gen, dtype=torch.float64).to(dtype)
        layout = rnd.choice(["plain", "plain", "transposed", "strided", "channels_last"])
        if layout == "transposed":
            x = x.transpose(2, 3).contiguous().transpose(2, 3)
        elif layout == "strided":
            x = torch.randn(n, c_in, h, 2 * w, generator=gen, dtype=torch.float64).to(dtype)[..., ::2]
        elif layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        bias = torch.randn(c_out, generator=gen, dtype=torch.float64).to(dtype) if rnd.random() < 0.5 else None
        grad = None
        if rnd.random() < 0.3:  # a non-contiguous grad_output
            ho, wo = h + 2 * ph - dh * (kh - 1), w + 2 * pw - dw * (kw - 1)
            grad = torch.randn(wo, ho, c_out, n, generator=gen, dtype=torch.float64).to(dtype).permute(3, 2, 1, 0)
        where = (f"n={n} c_in={c_in} c_out={c_out} hw={h}x{w} k={kh}x{kw} pad={ph},{pw} dil={dh},{dw} d={density} "
                 f"{dtype} threads={threads} {layout}")
        _check_conv(x, crow, col, values, (kh, kw), (ph, pw), (dh, dw), bias, grad, where)


TINY_PLANES = [(1, 1), (1, 9), (9, 1), (2, 2), (1, 2), (3, 1), (13, 17)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plane", TINY_PLANES, ids=[f"{h}x{w}" for h, w in TINY_PLANES])
def test_sparse_conv2d_tiny_and_odd_planes(plane, dtype):
    h, w = plane
    rnd = random.Random(h * 100 + w + (dtype == torch.float64))
    gen = torch.Generator().manual_seed(h * 31 + w)
    half = 4 if dtype == torch.float32 else 2
    cases = 0
    while cases < 14:
        kh, kw = rnd.randint(1, 7), rnd.randint(1, 7)
        ph, pw = rnd.randint(0, 4), rnd.randint(0, 4)
        dh, dw = rnd.randint(1, 3), rnd.randint(1, 3)
        if h + 2 * ph - dh * (kh - 1) < 1 or w + 2 * pw - dw * (kw - 1) < 1:
            continue
        cases += 1
        n, c_in, c_out = rnd.randint(1, half), rnd.randint(1, 6), rnd.randint(1, 6)
        crow, col, values = random_csr(c_out, c_in * kh * kw, rnd.choice([0.05, 0.5, 1.0]), gen=gen, dtype=dtype)
        x = torch.randn(n, c_in, h, w, generator=gen, dtype=dtype)
        bias = torch.randn(c_out, generator=gen, dtype=dtype)
        where = f"n={n} c_in={c_in} c_out={c_out} hw={h}x{w} k={kh}x{kw} pad={ph},{pw} dil={dh},{dw} {dtype}"
        _check_conv(x, crow, col, values, (kh, kw), (ph, pw), (dh, dw), bias, None, where)


@pytest.mark.parametrize("threads", [1, 3], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_sparse_conv2d_mid_size_planes(n, dtype, threads):
    """Several tiles per plane and many channel blocks (density 1, 5x5 taps)."""
    gen = torch.Generator().manual_seed(n + 10 * threads)
    for c_in, c_out, h, w, ks, pad, dil in [(16, 12, 28, 28, (3, 3), (1, 1), (1, 1)),
                                            (24, 8, 19, 33, (5, 5), (2, 1), (1, 2)),
                                            (3, 40, 30, 9, (1, 7), (0, 3), (1, 1))]:
        crow, col, values = random_csr(c_out, c_in * ks[0] * ks[1], 1.0 if c_in == 24 else 0.3, gen=gen, dtype=dtype)
        x = torch.randn(n, c_in, h, w, generator=gen, dtype=dtype)
        bias = torch.randn(c_out, generator=gen, dtype=dtype)
        _check_conv(x, crow, col, values, ks, pad, dil, bias, None, f"{n} {c_in}->{c_out} {h}x{w} {ks}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_conv2d_degenerate_sizes(dtype):
    gen = torch.Generator().manual_seed(3)
    crow, col, values = random_csr(4, 3 * 9, 0.5, gen=gen, dtype=dtype)
    ks, st, pad, dil = (3, 3), (1, 1), (1, 1), (1, 1)
    # empty batch
    x0 = torch.randn(0, 3, 6, 6, dtype=dtype)
    assert ops.sparse_conv2d(x0, crow, col, values, ks, st, pad, dil).shape == (0, 4, 6, 6)
    gi, gv = ops.sparse_conv2d_backward(torch.zeros(0, 4, 6, 6, dtype=dtype), x0, crow, col, values, ks, st, pad, dil)
    assert gi.shape == (0, 3, 6, 6) and gv.shape == values.shape and not gv.any()
    # no output channels
    c0, e, ev = torch.zeros(1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32), torch.zeros(0, dtype=dtype)
    x1 = torch.randn(2, 3, 6, 6, dtype=dtype)
    assert ops.sparse_conv2d(x1, c0, e, ev, ks, st, pad, dil).shape == (2, 0, 6, 6)
    gi, gv = ops.sparse_conv2d_backward(torch.zeros(2, 0, 6, 6, dtype=dtype), x1, c0, e, ev, ks, st, pad, dil)
    assert gi.shape == x1.shape and not gi.any() and gv.numel() == 0
    # no input channels: the output is the bias
    xc, c4 = torch.randn(2, 0, 6, 6, dtype=dtype), torch.zeros(5, dtype=torch.int32)
    bias = torch.arange(4, dtype=dtype)
    y = ops.sparse_conv2d(xc, c4, e, ev, ks, st, pad, dil, bias)
    assert torch.equal(y, bias.reshape(1, 4, 1, 1).expand(2, 4, 6, 6))
    # an all-zero filter bank with bias, and a padding far past a 1x1 kernel's reach
    x2 = torch.randn(1, 3, 1, 1, dtype=dtype)
    empty = torch.zeros(3, dtype=torch.int32)
    y = ops.sparse_conv2d(x2, empty, e, ev, (1, 1), st, (4, 3), dil, bias[:2])
    assert torch.equal(y, bias[:2].reshape(1, 2, 1, 1).expand(1, 2, 9, 7))
    c1, col1, v1 = random_csr(2, 3, 1.0, gen=gen, dtype=dtype)
    _check_conv(x2, c1, col1, v1, (1, 1), (4, 3), (1, 1), None, None, "1x1 plane, pad 4,3")


@pytest.mark.parametrize("threads", [1, 3], indirect=True)
def test_sparse_conv2d_backward_is_bitwise_repeatable(threads):
    gen = torch.Generator().manual_seed(8)
    crow, col, values = random_csr(16, 16 * 9, 0.5, gen=gen)
    x, grad = torch.randn(3, 16, 13, 17, generator=gen), torch.randn(3, 16, 13, 17, generator=gen)
    first = ops.sparse_conv2d_backward(grad, x, crow, col, values, (3, 3), (1, 1), (1, 1), (1, 1))
    for _ in range(3):
        again = ops.sparse_conv2d_backward(grad, x, crow, col, values, (3, 3), (1, 1), (1, 1), (1, 1))
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_conv2d_module_csr_autograd(dtype, threads):
    rnd = random.Random(55 + threads + 10 * (dtype == torch.float64))
    done = 0
    while done < 16:
        c_in, c_out = rnd.choice([1, 3, 8, 16]), rnd.choice([1, 4, 8, 16])
        kh, kw = rnd.randint(1, 5), rnd.randint(1, 5)
        pad, dil = (rnd.randint(0, 3), rnd.randint(0, 3)), (rnd.randint(1, 2), rnd.randint(1, 2))
        h, w = rnd.choice([(1, 1), (1, 8), (8, 1), (2, 2), (13, 17), (9, 30)])
        if h + 2 * pad[0] - dil[0] * (kh - 1) < 1 or w + 2 * pad[1] - dil[1] * (kw - 1) < 1:
            continue
        done += 1
        n = rnd.randint(1, 6)
        conv = nn.Conv2d(c_in, c_out, (kh, kw), 1, pad, dil, bias=rnd.random() < 0.7).to(dtype)
        layer = gk.SparseConv2d.from_dense(conv, density=rnd.choice([0.0, 0.05, 0.5, 1.0]), layout="csr",
                                           generator=torch.Generator().manual_seed(done))
        assert layer.layout == "csr"
        wd, rows = _dense_filter(layer.crow_indices, layer.col_indices, layer.weight.detach(), c_out, c_in, kh, kw)
        wr = wd.requires_grad_()
        br = layer.bias.detach().double().requires_grad_() if layer.bias is not None else None
        mode = rnd.choice(["plain", "channels_last", "strided", "unbatched", "sum"])
        x = torch.randn(n, c_in, h, w, dtype=dtype)
        if mode == "unbatched":
            x = x[0]
        elif mode == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif mode == "strided":
            x = torch.randn(n, c_in, h, 2 * w, dtype=dtype)[..., 1::2]
        xs, xr = x.clone().requires_grad_(), x.double().requires_grad_()
        ys = layer(xs)
        yr = F.conv2d(xr, wr, br, 1, pad, dil)
        red = c_in * kh * kw
        _close(ys.detach(), yr.detach(), dtype, red)
        if mode == "sum":  # an expanded gradient
            ys.sum().backward()
            yr.sum().backward()
        else:
            dy = torch.randn(yr.shape, dtype=dtype)
            ys.backward(dy)
            yr.backward(dy.double())
        red_dw = yr.numel() // c_out
        _close(xs.grad, xr.grad, dtype, c_out * kh * kw)
        _close(layer.weight.grad, wr.grad.reshape(c_out, -1)[rows, layer.col_indices.long()], dtype, red_dw)
        if layer.bias is not None:
            _close(layer.bias.grad, br.grad, dtype, red_dw)
        with torch.no_grad():
            _close(layer(x), yr.detach(), dtype, red)


GEOMS = [(1, 2, 3, 4, 5, (3, 2), (1, 0), (1, 1)), (2, 1, 2, 3, 3, (2, 3), (1, 2), (2, 1)),
         (1, 3, 2, 1, 6, (1, 3), (0, 1), (1, 2)), (2, 2, 2, 5, 4, (3, 3), (4, 0), (1, 1))]


@pytest.mark.parametrize("n, c_in, c_out, h, w, ks, pad, dil", GEOMS)
def test_sparse_conv2d_gradcheck_small_batches(n, c_in, c_out, h, w, ks, pad, dil):
    gen = torch.Generator().manual_seed(n + c_in + h * w)
    crow, col, values = random_csr(c_out, c_in * ks[0] * ks[1], 0.5, gen=gen, dtype=torch.float64)
    values.requires_grad_()
    x = torch.randn(n, c_in, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c_out, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v, b: ops.sparse_conv2d(x, crow, col, v, ks, (1, 1), pad, dil, b),
                                    (x, values, b), fast_mode=True)


def _conv_args():
    gen = torch.Generator().manual_seed(0)
    crow, col, values = random_csr(4, 3 * 9, 0.5, gen=gen)
    x, bias, grad = torch.randn(2, 3, 6, 6), torch.randn(4), torch.randn(2, 4, 6, 6)
    return x, crow, col, values, bias, grad


G = ((3, 3), (1, 1), (1, 1), (1, 1))
CONV_BAD = [
    ("input", lambda x, cr, cl, v, b, g: ops.sparse_conv2d(x[0], cr, cl, v, *G, b), r"input"),
    ("values", lambda x, cr, cl, v, b, g: ops.sparse_conv2d(x.double(), cr, cl, v, *G, b), r"values"),
    ("crow_indices", lambda x, cr, cl, v, b, g: ops.sparse_conv2d(x, cr.long(), cl, v, *G, b), r"crow_indices"),
    ("col_indices", lambda x, cr, cl, v, b, g: ops.sparse_conv2d(x, cr, cl.long(), v, *G, b), r"col_indices"),
    ("col_indices", lambda x, cr, cl, v, b, g: ops.sparse_conv2d(x[:, :2], cr, cl, v, *G, b), r"col_indices"),
    ("values", lambda x, cr, cl, v, b, g: ops.sparse_conv2d(x, cr, cl, v[:-1], *G, b), r"values"),
    ("bias", lambda x, cr, cl, v, b, g: ops.sparse_conv2d(x, cr, cl, v, *G, b[:3]), r"bias"),
    ("bias", lambda x, cr, cl, v, b, g: ops.sparse_conv2d(x, cr, cl, v, *G, b.double()), r"bias"),
    ("kernel_size", lambda x, cr, cl, v, b, g: ops.sparse_conv2d(x, cr, cl, v, (0, 3), *G[1:], b), r"kernel_size"),
    ("padding", lambda x, cr, cl, v, b, g: ops.sparse_conv2d(x, cr, cl, v, (3, 3), (1, 1), (-1, 0), (1, 1), b),
     r"padding"),
    ("dilation", lambda x, cr, cl, v, b, g: ops.sparse_conv2d(x, cr, cl, v, (3, 3), (1, 1), (1, 1), (0, 1), b),
     r"dilation"),
    ("input", lambda x, cr, cl, v, b, g: ops.sparse_conv2d(x.to("meta"), cr, cl, v, *G, b), r"meta"),
    ("values", lambda x, cr, cl, v, b, g: ops.sparse_conv2d(x, cr, cl, v.to("meta"), *G, b), r"values is on meta"),
    ("grad_output", lambda x, cr, cl, v, b, g: ops.sparse_conv2d_backward(g[:, :3], x, cr, cl, v, *G),
     r"grad_output"),
    ("grad_output", lambda x, cr, cl, v, b, g: ops.sparse_conv2d_backward(g.double(), x, cr, cl, v, *G),
     r"grad_output"),
    ("input_shape", lambda x, cr, cl, v, b, g: ops.sparse_conv2d_dx(g, cr, cl, v, [2, 3, 6], *G), r"input_shape"),
    ("grad_output", lambda x, cr, cl, v, b, g: ops.sparse_conv2d_dx(g, cr, cl, v, [2, 3, 7, 6], *G), r"grad_output"),
    ("grad_output", lambda x, cr, cl, v, b, g: ops.sparse_conv2d_dw(g[:1], x, cr, cl, *G), r"grad_output"),
    ("input", lambda x, cr, cl, v, b, g: ops.sparse_conv2d_dw(g, x[0], cr, cl, *G), r"input"),
]


@pytest.mark.parametrize("name, call, pattern", CONV_BAD, ids=[f"{i}-{c[0]}" for i, c in enumerate(CONV_BAD)])
def test_sparse_conv2d_errors_name_the_argument(name, call, pattern):
    x, crow, col, values, bias, grad = _conv_args()
    with pytest.raises((ValueError, TypeError, IndexError), match=pattern):
        call(x, crow, col, values, bias, grad)
