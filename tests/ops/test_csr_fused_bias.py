"""The CPU kernels of csr_linear with the bias fused: the forward adds it as y is stored, the backward
sums dy over the batch while packing it; in training the forward also hands its packed x to the
backward. Checked against the pure-torch reference on awkward shapes, and their own argument checks
(they are called directly from the autograd formula)."""

import pytest
import torch

import granet_kernels as gk
from granet_kernels.ops import reference
from granet_kernels.ops._index import transpose_index
from granet_kernels.ops.samples import random_csr

SHAPES = [  # (batch, out, in, density, empty_rows, empty_cols)
    (1, 7, 5, 0.5, 0, 0),
    (33, 40, 29, 0.2, 3, 4),
    (70, 64, 96, 0.1, 0, 0),
    (5, 9, 11, 0.0, 0, 0),  # all-zero mask: y = bias, dbias = dy summed
    (0, 6, 4, 0.5, 0, 0),  # empty batch
]


def _operands(batch, out, inp, density, empty_rows, empty_cols, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    crow, col, values = random_csr(out, inp, density, gen=g, dtype=dtype, empty_rows=empty_rows, empty_cols=empty_cols)
    x = torch.randn(batch, inp, generator=g, dtype=dtype)
    bias = torch.randn(out, generator=g, dtype=dtype)
    dy = torch.randn(batch, out, generator=g, dtype=dtype)
    return crow, col, values, x, bias, dy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_forward_and_backward_match_reference(shape, dtype, seed):
    crow, col, values, x, bias, dy = _operands(*shape, dtype, seed)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    y = torch.ops.granet._native_csr_linear_bias(x, crow, col, values, bias)
    torch.testing.assert_close(y, reference.csr_spmm(crow, col, values, x) + bias, **tol)
    torch.testing.assert_close(torch.ops.granet._native_csr_linear_bias(x, crow, col, values, None),
                               reference.csr_spmm(crow, col, values, x), **tol)
    y_kept, panels = torch.ops.granet._native_csr_linear_bias_panels(x, crow, col, values, bias)
    torch.testing.assert_close(y_kept, y, rtol=0, atol=0)
    ccol, row, perm = transpose_index(crow, col, x.shape[1])
    dx, dvalues, dbias = torch.ops.granet._native_csr_linear_backward_bias(ccol, row, perm, values, dy, x)
    # with the forward's packed x: the same kernel on the same operands, so the same bits
    for got, want in zip(torch.ops.granet._native_csr_linear_backward_bias(ccol, row, perm, values, dy, x, panels),
                         (dx, dvalues, dbias)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    ref_dx, ref_dvalues = reference.csr_linear_backward(ccol, row, perm, values, dy, x)
    torch.testing.assert_close(dx, ref_dx, **tol)
    torch.testing.assert_close(dvalues, ref_dvalues, **tol)
    torch.testing.assert_close(dbias, dy.sum(0), **tol)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [0, 1, 3, 8, 9, 16, 17, 31, 32, 33, 70])
def test_backward_with_the_csr_index_matches_reference(batch, dtype, threads, seed):
    # Given crow/col too, a batch that fits one panel takes the CSR-order backward (no value gather,
    # no dW scatter); larger ones the CSC backward. Either way: the reference's gradients.
    crow, col, values, x, bias, dy = _operands(batch, 70, 45, 0.15, 4, 3, dtype, seed)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    ccol, row, perm = transpose_index(crow, col, x.shape[1])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _, panels = torch.ops.granet._native_csr_linear_bias_panels(x, crow, col, values, bias)
        for x_panels in (None, panels):
            dx, dvalues, dbias = torch.ops.granet._native_csr_linear_backward_bias(
                ccol, row, perm, values, dy, x, x_panels, crow, col)
            ref_dx, ref_dvalues = reference.csr_linear_backward(ccol, row, perm, values, dy, x)
            torch.testing.assert_close(dx, ref_dx, **tol)
            torch.testing.assert_close(dvalues, ref_dvalues, **tol)
            torch.testing.assert_close(dbias, dy.sum(0), **tol)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("batch", [1, 20])
def test_backward_checks_the_csr_index_it_is_given(batch, seed):
    crow, col, values, x, bias, dy = _operands(batch, 300, 200, 0.1, 5, 5, torch.float32, seed)
    ccol, row, perm = transpose_index(crow, col, x.shape[1])
    backward = torch.ops.granet._native_csr_linear_backward_bias
    for pos in (0, col.numel() // 2, col.numel() - 1):
        for wrong in (x.shape[1], -1, (1 << 31) - 1):
            bad_col = col.clone()
            bad_col[pos] = wrong
            with pytest.raises(IndexError, match=r"\bcol_indices\b"):
                backward(ccol, row, perm, values, dy, x, None, crow, bad_col)
    with pytest.raises(ValueError, match=r"\bcrow_indices\b"):
        backward(ccol, row, perm, values, dy, x, None, crow[:-1], col)
    with pytest.raises(ValueError, match=r"\bcol_indices\b"):
        backward(ccol, row, perm, values, dy, x, None, crow, col[:-1])
    bad_crow = crow.clone()
    bad_crow[5] = bad_crow[6] + 1  # decreasing pointers
    with pytest.raises((ValueError, IndexError), match=r"\bcrow_indices\b"):
        backward(ccol, row, perm, values, dy, x, None, bad_crow, col)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_row_forward_is_the_training_forward_bit_for_bit(dtype, threads, seed):
    # Batch 1 without grad reads x in place (no panel); its sums run in the panel kernel's order.
    crow, col, values, x, bias, _ = _operands(1, 300, 260, 0.2, 7, 5, dtype, seed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for b in (bias, None):
            y = torch.ops.granet._native_csr_linear_bias(x, crow, col, values, b)
            y_training, _ = torch.ops.granet._native_csr_linear_bias_panels(x, crow, col, values, b)
            torch.testing.assert_close(y, y_training, rtol=0, atol=0)
            want = reference.csr_spmm(crow, col, values, x) + (b if b is not None else 0)
            tol = 1e-5 if dtype == torch.float32 else 1e-12
            torch.testing.assert_close(y, want, rtol=tol, atol=tol)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("panel_bytes", ["32", "64", "128"])
def test_one_row_forward_matches_the_training_forward_under_every_panel_width(panel_bytes):
    # The panel width is read once per process: a child process per forced width.
    import subprocess
    import sys
    code = """
import torch, granet_kernels
from granet_kernels.ops.samples import random_csr
for seed in range(8):
    g = torch.Generator().manual_seed(seed)
    for dtype in (torch.float32, torch.float64):
        crow, col, values = random_csr(97, 150, 0.3, gen=g, dtype=dtype)
        x = torch.randn(1, 150, generator=g, dtype=dtype)
        a = torch.ops.granet._native_csr_linear_bias(x, crow, col, values, None)
        b, _ = torch.ops.granet._native_csr_linear_bias_panels(x, crow, col, values, None)
        assert torch.equal(a, b), (seed, dtype, (a - b).abs().max())
print("ok")
"""
    env = {**__import__("os").environ, "GRANET_CSR_PANEL_BYTES": panel_bytes}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr


def test_backward_refuses_panels_of_another_batch(seed):
    crow, col, values, x, bias, dy = _operands(5, 20, 30, 0.3, 0, 0, torch.float32, seed)
    ccol, row, perm = transpose_index(crow, col, x.shape[1])
    backward = torch.ops.granet._native_csr_linear_backward_bias
    for other in (x[:3], x[:4], torch.randn_like(x)):  # same panel count and length, other rows
        _, panels = torch.ops.granet._native_csr_linear_bias_panels(other.contiguous(), crow, col, values, bias)
        with pytest.raises(ValueError, match=r"\bx_panels does not hold x"):
            backward(ccol, row, perm, values, dy, x, panels, crow, col)
    _, panels = torch.ops.granet._native_csr_linear_bias_panels(x, crow, col, values, bias)
    backward(ccol, row, perm, values, dy, x, panels, crow, col)  # its own panels pass


def test_sparse_linear_training_step_uses_the_fused_path_and_matches_dense():
    torch.manual_seed(0)
    layer = gk.SparseLinear(37, 45, density=0.2, layout="csr")
    x = torch.randn(50, 37, requires_grad=True)
    dy = torch.randn(50, 45)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        layer(x).backward(dy)
    ran = {e.key for e in prof.key_averages()}
    assert {"granet::_native_csr_linear_bias_panels", "granet::_native_csr_linear_backward_bias"} <= ran, ran
    dense = layer.to_dense()
    xd = x.detach().clone().requires_grad_()
    dense(xd).backward(dy)
    torch.testing.assert_close(x.grad, xd.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, dense.bias.grad, rtol=1e-5, atol=1e-5)
    # the sparse weight's gradient: the dense one at the mask's positions, in CSR (row-major) order
    torch.testing.assert_close(layer.weight.grad, dense.weight.grad[layer.mask], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "mutate,exc,pattern",
    [
        (lambda a: {**a, "bias": torch.randn(3)}, ValueError, r"\bbias must be 1-D with 6"),
        (lambda a: {**a, "bias": torch.randn(6, 1)}, ValueError, r"\bbias must be 1-D"),
        (lambda a: {**a, "bias": torch.randn(6, dtype=torch.float64)}, ValueError, r"\bbias dtype"),
        (lambda a: {**a, "col": a["col"].clone().fill_(99)}, IndexError, r"\bcol_indices\b"),
        (lambda a: {**a, "x": a["x"].double()}, ValueError, r"\bvalues dtype"),
    ],
)
def test_fused_forward_rejects_bad_input(mutate, exc, pattern):
    crow, col, values, x, bias, _ = _operands(4, 6, 5, 0.5, 0, 0, torch.float32, 0)
    args = mutate({"x": x, "crow": crow, "col": col, "values": values, "bias": bias})
    with pytest.raises(exc, match=pattern):
        torch.ops.granet._native_csr_linear_bias(args["x"], args["crow"], args["col"], args["values"], args["bias"])


@pytest.mark.parametrize(
    "mutate,exc,pattern",
    [
        (lambda a: {**a, "row": a["row"].clone().fill_(99)}, IndexError, r"\brow_indices\b"),
        (lambda a: {**a, "row": a["row"].clone().fill_(-3)}, IndexError, r"\brow_indices\b"),
        (lambda a: {**a, "row": a["row"].long()}, ValueError, r"\brow_indices\b"),
        (lambda a: {**a, "perm": a["perm"].clone().fill_(-1)}, IndexError, r"\bperm\b"),
        (lambda a: {**a, "perm": a["perm"].long()}, ValueError, r"\bperm\b"),
        (lambda a: {**a, "x": a["x"][:, :3]}, ValueError, r"\bx\.shape\[1\]"),
        (lambda a: {**a, "dy": a["dy"][:2]}, ValueError, r"batch size"),
    ],
)
def test_fused_backward_rejects_bad_input(mutate, exc, pattern):
    crow, col, values, x, _, dy = _operands(4, 6, 5, 0.5, 0, 0, torch.float32, 0)
    ccol, row, perm = transpose_index(crow, col, x.shape[1])
    a = mutate({"ccol": ccol, "row": row, "perm": perm, "values": values, "dy": dy, "x": x})
    with pytest.raises(exc, match=pattern):
        torch.ops.granet._native_csr_linear_backward_bias(a["ccol"], a["row"], a["perm"], a["values"], a["dy"], a["x"])


def test_fused_backward_takes_a_non_contiguous_row_index():
    # A valid index in a strided tensor goes through the detailed checks, then gives the same result.
    crow, col, values, x, _, dy = _operands(4, 6, 5, 0.5, 0, 0, torch.float32, 0)
    ccol, row, perm = transpose_index(crow, col, x.shape[1])
    strided = torch.stack([row, row], 1)[:, 0]
    assert not strided.is_contiguous()
    want = torch.ops.granet._native_csr_linear_backward_bias(ccol, row, perm, values, dy, x)
    got = torch.ops.granet._native_csr_linear_backward_bias(ccol, strided, perm, values, dy, x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_packed_input_goes_to_the_backward_only_when_training():
    layer = gk.SparseLinear(20, 12, density=0.3, layout="csr", bias=False)
    x = torch.randn(9, 20)
    hint = gk.ops._autograd.BACKWARD_HINT
    for context in (torch.no_grad(), torch.inference_mode()):
        with context, torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = layer(x)
        ran = {e.key for e in prof.key_averages()}
        assert "granet::_native_csr_linear_bias" in ran and "granet::_native_csr_linear_bias_panels" not in ran, ran
        assert not hasattr(y, hint)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        layer(x)  # x needs no gradient: the backward is dW alone (csr_sddmm), which packs its own x
    assert "granet::_native_csr_linear_bias_panels" not in {e.key for e in prof.key_averages()}
    layer.weight.requires_grad_(False)  # no dW wanted: nothing to keep
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        layer(x.requires_grad_())
    assert "granet::_native_csr_linear_bias_panels" not in {e.key for e in prof.key_averages()}
    layer.weight.requires_grad_(True)
    y = layer(x)
    assert not hasattr(y, hint)  # the backward holds the panels, not the output the user keeps
    dy = torch.randn_like(y)
    y.backward(dy)
    _assert_grads_match_dense(layer, x, dy)


def _assert_grads_match_dense(layer, x, dy):
    """x.grad and the layer's gradients (after y.backward(dy)) against its dense copy's."""
    dense = layer.to_dense()
    xd = x.detach().clone().requires_grad_()
    dense(xd).backward(dy)
    torch.testing.assert_close(x.grad, xd.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, dense.weight.grad[layer.mask], rtol=1e-5, atol=1e-5)
    if layer.bias is not None:
        torch.testing.assert_close(layer.bias.grad, dense.bias.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_one_row_training_step_packs_nothing(bias):
    # A batch of one row: the forward reads x in place (no panels) and the backward's one-row kernel
    # too; outputs equal the inference forward bit for bit and the gradients the dense ones.
    gen = torch.Generator().manual_seed(5)
    layer = gk.SparseLinear(37, 19, density=0.3, layout="csr", bias=bias, generator=gen)
    x = torch.randn(1, 37, generator=gen, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y = layer(x)
    ran = {e.key for e in prof.key_averages()}
    assert "granet::_native_csr_linear_bias" in ran and "granet::_native_csr_linear_bias_panels" not in ran, ran
    with torch.no_grad():
        assert torch.equal(y, layer(x))
    dy = torch.randn(1, 19, generator=gen)
    y.backward(dy)
    _assert_grads_match_dense(layer, x, dy)


@pytest.mark.parametrize(
    "bad",
    [
        lambda p: p[:-1],  # wrong size
        lambda p: p.double(),  # wrong dtype
        lambda p: p.reshape(-1, 1),  # not 1-D
    ],
)
def test_fused_backward_rejects_bad_panels(bad):
    crow, col, values, x, bias, dy = _operands(33, 6, 5, 0.5, 0, 0, torch.float32, 0)
    _, panels = torch.ops.granet._native_csr_linear_bias_panels(x, crow, col, values, bias)
    ccol, row, perm = transpose_index(crow, col, x.shape[1])
    with pytest.raises(ValueError, match=r"\bx_panels\b"):
        torch.ops.granet._native_csr_linear_backward_bias(ccol, row, perm, values, dy, x, bad(panels))


# The forward checks col_indices and the backward row_indices in their first panel, as they read
# them (no separate pass). One bad entry anywhere, in a pattern of several row blocks, panels and
# column ranges, with one thread or two, must still come back as an error naming the index.
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [0, 1, 70])
@pytest.mark.parametrize("bad_value", ["past-end", "negative", "huge"])
def test_a_bad_index_anywhere_is_caught_by_the_kernels(batch, bad_value, threads, seed):
    crow, col, values, x, bias, dy = _operands(batch, 300, 200, 0.1, 5, 5, torch.float32, seed)
    ccol, row, perm = transpose_index(crow, col, x.shape[1])
    g = torch.Generator().manual_seed(seed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(3):
            pos = int(torch.randint(col.numel(), (1,), generator=g))
            wrong = {"past-end": None, "negative": -1 - pos % 7, "huge": (1 << 31) - 1}[bad_value]
            bad_col = col.clone()
            bad_col[pos] = x.shape[1] if wrong is None else wrong
            with pytest.raises(IndexError, match=r"\bcol_indices\b"):
                torch.ops.granet._native_csr_linear_bias(x, crow, bad_col, values, bias)
            with pytest.raises(IndexError, match=r"\bcol_indices\b"):
                torch.ops.granet._native_csr_linear_bias_panels(x, crow, bad_col, values, bias)
            with pytest.raises(IndexError, match=r"\bcol_indices\b"):
                torch.ops.granet._native_csr_spmm(crow, bad_col, values, x)
            bad_row = row.clone()
            bad_row[pos] = dy.shape[1] if wrong is None else wrong
            with pytest.raises(IndexError, match=r"\brow_indices\b"):
                torch.ops.granet._native_csr_linear_backward_bias(ccol, bad_row, perm, values, dy, x)
            with pytest.raises(IndexError, match=r"\brow_indices\b"):
                torch.ops.granet._native_csr_linear_backward(ccol, bad_row, perm, values, dy, x)
            with pytest.raises(IndexError, match=r"\brow_indices\b"):
                torch.ops.granet._native_csr_spmm_t(ccol, bad_row, perm, values, dy)
        # and the good index still gives the reference's result
        y = torch.ops.granet._native_csr_linear_bias(x, crow, col, values, bias)
        torch.testing.assert_close(y, reference.csr_spmm(crow, col, values, x) + bias, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)


def _step(layer, x, dy):
    layer.zero_grad(set_to_none=True)
    x.grad = None
    y = layer(x)
    y.backward(dy)
    return y.grad_fn, [y.detach(), x.grad, layer.weight.grad, layer.bias.grad]


def test_eager_training_step_skips_the_op_machinery_and_matches_the_op():
    # Plain eager CPU training goes through the eager fast path (ops._autograd.call); anything that must see the custom op
    # (here a dispatch mode, FlopCounterMode) goes through granet::csr_linear. Same kernels, same bits.
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    layer = gk.SparseLinear(70, 50, density=0.2, layout="csr")
    x = torch.randn(40, 70, requires_grad=True)
    dy = torch.randn(40, 50)
    fn, eager = _step(layer, x, dy)
    assert type(fn).__name__ == "_EagerCallBackward"
    with FlopCounterMode(display=False) as counter:
        fn, via_op = _step(layer, x, dy)
    assert type(fn).__name__ != "_EagerCallBackward"
    assert counter.get_total_flops() == 3 * 2 * layer.nnz * 40  # forward, dx, dW
    for a, b in zip(eager, via_op):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with gk.backend("reference"):  # a forced backend other than "cpu" takes the op too
        fn, reference_step = _step(layer, x, dy)
    assert type(fn).__name__ != "_EagerCallBackward"
    for a, b in zip(eager, reference_step):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_eager_training_step_backward_runs_again_with_retain_graph():
    layer = gk.SparseLinear(12, 9, density=0.4, layout="csr")
    x = torch.randn(5, 12, requires_grad=True)
    y = layer(x)
    assert type(y.grad_fn).__name__ == "_EagerCallBackward"
    dy = torch.randn_like(y)
    first = torch.autograd.grad(y, (x, layer.weight, layer.bias), dy, retain_graph=True)
    second = torch.autograd.grad(y, (x, layer.weight, layer.bias), dy)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
