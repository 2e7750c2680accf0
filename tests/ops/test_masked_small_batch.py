"""The masked layout's small-batch CPU kernels: the mask applied as the weight is read, forward
(`_native_masked_linear_small`) and both backward products in one pass (`_native_masked_backward_small`).
Checked against the dense masked computation on awkward shapes, whatever the weight holds outside the
mask, and through `masked_matmul` and SparseLinear, whose small batches take them."""

import pytest
import torch

import granet_kernels as gk
from granet_kernels.ops import masked as masked_ops

SHAPES = [  # (batch, out, in)
    (1, 7, 5),
    (2, 9, 16),
    (3, 33, 17),
    (4, 5, 64),
    (5, 13, 40),
    (8, 4, 1024),  # rows of x and dx 4 KB apart
    (9, 6, 31),
    (16, 37, 100),
    (1, 1, 1),
    (0, 6, 4),  # empty batch
    (3, 0, 8),  # no outputs
    (3, 6, 0),  # no inputs: y = bias
]


def _operands(batch, out, inp, dtype, seed, outside=float("nan")):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, inp, generator=g, dtype=dtype)
    mask = torch.rand(out, inp, generator=g) < 0.4
    weight = torch.randn(out, inp, generator=g, dtype=dtype)
    weight[~mask] = outside  # the kernels must not read it as a value
    bias = torch.randn(out, generator=g, dtype=dtype)
    dy = torch.randn(batch, out, generator=g, dtype=dtype)
    return x, weight, mask, bias, dy


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_small_batch_kernels_match_the_dense_masked_computation(shape, dtype, threads, seed):
    x, weight, mask, bias, dy = _operands(*shape, dtype, seed)
    masked = torch.where(mask, weight, 0)
    tol = _tol(dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = torch.ops.granet._native_masked_linear_small(x, weight, mask, bias)
        torch.testing.assert_close(y, x @ masked.t() + bias, **tol)
        torch.testing.assert_close(torch.ops.granet._native_masked_linear_small(x, weight, mask, None), x @ masked.t(),
                                   **tol)
        dx, dw = torch.ops.granet._native_masked_backward_small(dy, x, weight, mask, True, True)
        torch.testing.assert_close(dx, dy @ masked, **tol)
        torch.testing.assert_close(dw, torch.where(mask, dy.t() @ x, 0), **tol)
        assert not dw[~mask].any()  # exact zeros outside the mask
        dx_only, empty = torch.ops.granet._native_masked_backward_small(dy, x, weight, mask, True, False)
        assert empty.numel() == 0
        torch.testing.assert_close(dx_only, dx, rtol=0, atol=0)
        empty, dw_only = torch.ops.granet._native_masked_backward_small(dy, x, None, mask, False, True)
        assert empty.numel() == 0
        torch.testing.assert_close(dw_only, dw, rtol=0, atol=0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("outside", [float("inf"), -3.5, 0.0])
def test_small_batch_forward_ignores_any_value_outside_the_mask(outside, seed):
    x, weight, mask, bias, _ = _operands(3, 12, 37, torch.float32, seed, outside=outside)
    y = torch.ops.granet._native_masked_linear_small(x, weight, mask, bias)
    torch.testing.assert_close(y, x @ torch.where(mask, weight, 0).t() + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2, 5, masked_ops.SMALL_BATCH_MAX])
def test_masked_matmul_takes_the_small_batch_kernels_with_gradients(batch, seed):
    x, weight, mask, bias, dy = _operands(batch, 24, 41, torch.float64, seed, outside=2.0)
    x.requires_grad_()
    weight.requires_grad_()
    bias.requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y = gk.ops.masked_matmul(x, weight, mask, bias)
        y.backward(dy)
    called = {e.name for e in prof.events()}
    assert {"granet::_native_masked_linear_small", "granet::_native_masked_backward_small"} <= called
    assert "granet::_native_masked_positions_are_zero" not in called  # the mask is applied, not checked
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    (xr @ (wr * mask).t() + br).backward(dy)
    for got, want in ((x.grad, xr.grad), (weight.grad, wr.grad), (bias.grad, br.grad)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not weight.grad[~mask].any()


@pytest.mark.parametrize("batch", [masked_ops.SMALL_BATCH_BACKWARD_MAX_LARGE_WEIGHT,
                                   masked_ops.SMALL_BATCH_BACKWARD_MAX_LARGE_WEIGHT + 1,
                                   masked_ops.SMALL_BATCH_MAX_LARGE_WEIGHT])
def test_large_weight_between_the_limits_takes_the_small_forward_and_the_blas_backward(batch, seed):
    # Above the backward's limit a small-batch forward is followed by the pooled BLAS backward (check + GEMMs).
    out, inp = 2049, 2048  # just above LARGE_WEIGHT_NUMEL entries
    assert out * inp > masked_ops.LARGE_WEIGHT_NUMEL
    x, weight, mask, bias, dy = _operands(batch, out, inp, torch.float32, seed, outside=0.0)
    for t in (x, weight, bias):
        t.requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        gk.ops.masked_matmul(x, weight, mask, bias).backward(dy)
    called = {e.name for e in prof.events()}
    assert "granet::_native_masked_linear_small" in called
    small_backward = batch <= masked_ops.SMALL_BATCH_BACKWARD_MAX_LARGE_WEIGHT
    assert ("granet::_native_masked_backward_small" in called) == small_backward
    assert ("granet::_native_pooled_mm" in called) != small_backward
    masked = torch.where(mask, weight.detach(), 0)
    torch.testing.assert_close(x.grad, dy @ masked, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(weight.grad, torch.where(mask, dy.t() @ x.detach(), 0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bias.grad, dy.sum(0), rtol=1e-4, atol=1e-4)
    assert not weight.grad[~mask].any()


def test_small_batch_choice_follows_batch_size_and_weight_size():
    small_w = torch.zeros(64, 64)
    large_w = torch.zeros(1, masked_ops.LARGE_WEIGHT_NUMEL + 1)
    for w in (small_w, large_w):
        m = torch.ones_like(w, dtype=torch.bool)
        limit = masked_ops.SMALL_BATCH_MAX_LARGE_WEIGHT if w is large_w else masked_ops.SMALL_BATCH_MAX
        assert masked_ops._small_batch(torch.zeros(limit, w.shape[1]), w, m)
        assert not masked_ops._small_batch(torch.zeros(limit + 1, w.shape[1]), w, m)
        limit = masked_ops.SMALL_BATCH_BACKWARD_MAX_LARGE_WEIGHT if w is large_w else masked_ops.SMALL_BATCH_MAX
        assert masked_ops._small_batch_backward(torch.zeros(limit, w.shape[0]), w)
        assert not masked_ops._small_batch_backward(torch.zeros(limit + 1, w.shape[0]), w)
    # transposed (non-contiguous) operands keep the BLAS route
    assert not masked_ops._small_batch(torch.zeros(2, 64), small_w.t(), torch.ones(64, 64, dtype=torch.bool).t())


@pytest.mark.parametrize("batch", [1, 4, 33])
def test_sparse_linear_masked_layout_matches_dense_at_small_batches(batch, seed):
    g = torch.Generator().manual_seed(seed)
    dense = torch.nn.Linear(50, 30).double()
    layer = gk.SparseLinear.from_dense(dense, density=0.5, layout="masked", generator=g)
    reference = layer.to_dense()
    x = torch.randn(batch, 50, generator=g, dtype=torch.float64)
    xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    dy = torch.randn(batch, 30, generator=g, dtype=torch.float64)
    layer(xs).backward(dy)
    reference(xr).backward(dy)
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad * layer.mask, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(x), rtol=1e-12, atol=1e-12)


BAD_INPUTS = [
    (lambda a: {**a, "x": a["x"].float()}, ValueError, "weight dtype"),
    (lambda a: {**a, "x": a["x"][:, :-1]}, ValueError, r"x.shape\[1\]"),
    (lambda a: {**a, "mask": a["mask"][:-1]}, ValueError, "mask must have weight's shape"),
    (lambda a: {**a, "mask": a["mask"].double()}, ValueError, "mask must be a 2-D bool"),
    (lambda a: {**a, "mask": a["mask"].t().contiguous().t()}, ValueError, "mask must be contiguous"),
    (lambda a: {**a, "weight": a["weight"].t().contiguous().t()}, ValueError, "weight must be a contiguous"),
    (lambda a: {**a, "bias": a["bias"][:-1]}, ValueError, "bias must be"),
    (lambda a: {**a, "x": a["x"].int()}, ValueError, "x must be float32 or float64"),
]


@pytest.mark.parametrize("mutate, exc, pattern", BAD_INPUTS)
def test_small_batch_forward_rejects_bad_input(mutate, exc, pattern, seed):
    x, weight, mask, bias, _ = _operands(3, 6, 9, torch.float64, seed)
    args = mutate({"x": x, "weight": weight, "mask": mask, "bias": bias})
    with pytest.raises(exc, match=pattern):
        torch.ops.granet._native_masked_linear_small(args["x"], args["weight"], args["mask"], args["bias"])


def test_small_batch_backward_rejects_bad_input(seed):
    x, weight, mask, _, dy = _operands(3, 6, 9, torch.float64, seed)
    op = torch.ops.granet._native_masked_backward_small
    with pytest.raises(ValueError, match="dx needs the weight"):
        op(dy, x, None, mask, True, False)
    with pytest.raises(ValueError, match=r"dy.shape\[1\]"):
        op(dy[:, :-1], x, weight, mask, True, True)
    with pytest.raises(ValueError, match="x and dy must have the same batch size"):
        op(dy, x[:-1], weight, mask, True, True)
    with pytest.raises(ValueError, match=r"x.shape\[1\] must be mask.shape\[1\]"):
        op(dy, x[:, :-1], None, mask, False, True)
    with pytest.raises(ValueError, match="x must be a CPU tensor of dy's dtype"):
        op(dy, x.float(), weight, mask, True, True)
