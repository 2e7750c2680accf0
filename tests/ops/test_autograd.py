"""Gradients of the differentiable ops: gradcheck in float64, and backward against torch autograd
through the equivalent dense layer. The backward-only building blocks refuse to be differentiated."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import granet_kernels
from granet_kernels.ops import OPS
from granet_kernels.ops._autograd import call
from granet_kernels.ops._index import csr_rows
from granet_kernels.ops.samples import sample_inputs
from granet_testing import DEVICES, requires_grad_floats

# Positions of the floating arguments gradcheck differentiates with respect to.
GRAD_ARGS = {
    "csr_spmm": (2, 3),  # values, x
    "csr_linear": (0, 6, 7),  # x, values, bias
    "bsr_spmm": (2, 3),  # values, x
    "masked_matmul": (0, 1, 3),  # x, weight, bias
    "masked_conv2d": (0, 1, 6),  # input, weight, bias
    "sparse_conv2d": (0, 3, 8),  # input, values, bias
}
GRADCHECK_MAX_ELEMENTS = 600  # numerical Jacobians cost one forward per input element
# Above this many input elements gradcheck runs in fast mode (one random projection of the Jacobian
# instead of all of it); the smaller samples get the full check.
GRADCHECK_FULL_ELEMENTS = 150


def _grad_elements(name, args):
    return sum(a.numel() for i, a in enumerate(args) if i in GRAD_ARGS[name] and isinstance(a, torch.Tensor))


def _small_samples(name, device, seed):
    samples = sample_inputs(name, device=device, dtype=torch.float64, seed=seed)
    small = [s for s in samples if _grad_elements(name, s) <= GRADCHECK_MAX_ELEMENTS]
    assert len(small) >= 2, f"{name}: too few small samples for gradcheck"
    return small


def _caller(name, path):
    """The op itself, or the Python faces' entry point (the eager fast path where it applies)."""
    opdef = OPS[name]
    return opdef.op if path == "op" else lambda *args: call(opdef, *args)


@pytest.mark.parametrize("path", ["op", "eager"])
@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(GRAD_ARGS))
def test_gradcheck(name, device, backend, path, seed):
    run = _caller(name, path)
    for i, args in enumerate(_small_samples(name, device, seed)):
        leaves = requires_grad_floats(args, GRAD_ARGS[name])
        positions = [j for j in GRAD_ARGS[name] if isinstance(leaves[j], torch.Tensor)]

        def fn(*diff, leaves=leaves, positions=positions):
            full = list(leaves)
            for j, t in zip(positions, diff):
                full[j] = t
            return run(*full)

        fast = _grad_elements(name, args) > GRADCHECK_FULL_ELEMENTS
        with granet_kernels.backend(backend):
            assert torch.autograd.gradcheck(fn, tuple(leaves[j] for j in positions), fast_mode=fast,
                                            nondet_tol=_nondet_tol(name, device)), f"{name} sample {i}"


def _nondet_tol(name, device):
    """gradcheck's tolerance for two backward runs on the same input differing. Only the conv ops
    (sparse_conv2d, masked_conv2d) on CUDA may differ: their backward runs cuDNN (through
    F.conv2d's autograd / torch.nn.grad), whose weight-gradient algorithms accumulate in a
    run-dependent order (float64 rounding, ~1e-15 of the values; seen on an H100 and an H200).
    Everything else must be bit-reproducible."""
    return 1e-10 if torch.device(device).type == "cuda" and name.endswith("conv2d") else 0.0


# --- backward against the dense layer -------------------------------------------------------------

def _csr_dense(crow, col, values, n_cols):
    """Dense [rows, n_cols] weight with values scattered in (differentiable in values)."""
    rows = csr_rows(crow, col.numel())
    dense = values.new_zeros(crow.numel() - 1, n_cols)
    dense[rows, col.long()] = values  # the samples' patterns have no duplicate positions
    return dense


def _bsr_dense(crow, col, values, n_cols):
    bs = values.shape[-1]
    dense = values.new_zeros((crow.numel() - 1) * bs, n_cols)
    for r in range(crow.numel() - 1):
        for p in range(int(crow[r]), int(crow[r + 1])):
            c = int(col[p])
            dense[r * bs:(r + 1) * bs, c * bs:(c + 1) * bs] = values[p]
    return dense


def _grads(out, leaves, grad_out):
    inputs = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    # An empty pattern leaves the dense layer's values unused: their gradient is zeros.
    return torch.autograd.grad(out, inputs, grad_out, allow_unused=True, materialize_grads=True)


def _compare(name, i, got, expected):
    assert len(got) == len(expected)
    for j, (g, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name} sample {i}, grad {j}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(GRAD_ARGS))
def test_backward_matches_dense(name, device, seed):
    opdef = OPS[name]
    gen = torch.Generator().manual_seed(seed)
    for i, args in enumerate(sample_inputs(name, device=device, dtype=torch.float64, seed=seed)):
        ours = requires_grad_floats(args, GRAD_ARGS[name])
        theirs = requires_grad_floats(args, GRAD_ARGS[name])
        out = opdef.op(*ours)
        grad_out = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(device)
        got = _grads(out, ours, grad_out)

        if name == "csr_spmm":
            crow, col, values, x = theirs
            dense_out = F.linear(x, _csr_dense(crow, col, values, x.shape[1]))
        elif name == "csr_linear":
            x, crow, col, _, _, _, values, bias = theirs
            dense_out = F.linear(x, _csr_dense(crow, col, values, x.shape[1]), bias)
        elif name == "bsr_spmm":
            crow, col, values, x = theirs
            dense_out = F.linear(x, _bsr_dense(crow, col, values, x.shape[1]))
        elif name == "masked_matmul":
            x, weight, mask, bias = theirs
            dense_out = F.linear(x, weight * mask, bias)
        elif name == "masked_conv2d":
            input, weight, mask, stride, padding, dilation, bias = theirs
            dense_out = F.conv2d(input, weight * mask, bias, stride, padding, dilation)
        else:
            input, crow, col, values, ks, stride, padding, dilation, bias = theirs
            flat = _csr_dense(crow, col, values, input.shape[1] * ks[0] * ks[1])
            weight = flat.reshape(flat.shape[0], input.shape[1], *ks)
            dense_out = F.conv2d(input, weight, bias, stride, padding, dilation)
        torch.testing.assert_close(out, dense_out.detach(), rtol=1e-10, atol=1e-10)
        expected = _grads(dense_out, theirs, grad_out)
        _compare(name, i, got, expected)
        if name in ("masked_matmul", "masked_conv2d"):
            # Pruned weights get no gradient at all, not merely a small one.
            weight_grad = got[1]
            assert not bool(weight_grad[~args[2]].any()), f"sample {i}: gradient leaked outside the mask"


@pytest.mark.parametrize("path", ["op", "eager"])
@pytest.mark.parametrize("name", list(GRAD_ARGS))
def test_backward_of_one_input_at_a_time(name, path):
    """needs_input_grad is honoured (the backward takes another path for a single gradient): each
    gradient alone equals the one computed with all of them."""
    run = _caller(name, path)
    args = sample_inputs(name, dtype=torch.float64, seed=7)[1]
    positions = [j for j in GRAD_ARGS[name] if isinstance(args[j], torch.Tensor)]
    full = requires_grad_floats(args, positions)
    grad_out = torch.randn(OPS[name].op(*args).shape, dtype=torch.float64)
    together = torch.autograd.grad(run(*full), [full[j] for j in positions], grad_out)
    for k, position in enumerate(positions):
        leaves = requires_grad_floats(args, (position,))
        (alone,) = torch.autograd.grad(run(*leaves), leaves[position], grad_out)
        torch.testing.assert_close(alone, together[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(GRAD_ARGS))
def test_eager_path_is_taken_and_matches_the_op(name, dtype, seed):
    """On CPU tensors in plain eager mode `call` skips the custom op (its autograd node is the
    fast path's) and gives the op's output and gradients bit for bit; under a dispatch mode
    (FlopCounterMode, which must count the op) or a forced non-CPU backend it is the op."""
    from torch.utils.flop_counter import FlopCounterMode

    opdef = OPS[name]
    gen = torch.Generator().manual_seed(seed)
    for i, args in enumerate(sample_inputs(name, dtype=dtype, seed=seed)):
        positions = [j for j in GRAD_ARGS[name] if isinstance(args[j], torch.Tensor)]
        mine = requires_grad_floats(args, positions)
        theirs = requires_grad_floats(args, positions)
        out = call(opdef, *mine)
        assert type(out.grad_fn).__name__ == "_EagerCallBackward", f"{name} sample {i}: {out.grad_fn}"
        ref = opdef.op(*theirs)
        assert type(ref.grad_fn).__name__ != "_EagerCallBackward"
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        grad_out = torch.randn(out.shape, generator=gen, dtype=dtype)
        for a, b in zip(torch.autograd.grad(out, [mine[j] for j in positions], grad_out),
                        torch.autograd.grad(ref, [theirs[j] for j in positions], grad_out)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        with torch.no_grad():  # inference takes the fast path too
            torch.testing.assert_close(call(opdef, *args), ref.detach(), rtol=0, atol=0)
    with FlopCounterMode(display=False) as counter:
        out = call(opdef, *requires_grad_floats(args, positions))
    assert type(out.grad_fn).__name__ != "_EagerCallBackward" and counter.get_total_flops() > 0
    with granet_kernels.backend("reference"):
        out = call(opdef, *requires_grad_floats(args, positions))
    assert type(out.grad_fn).__name__ != "_EagerCallBackward"


# The backward building blocks (csr_spmm_t, csr_sddmm, bsr_spmm_t, ...): every op but the
# differentiable ones and the selection ops, which take no gradient-carrying inputs.
SELECTION = ("topk_threshold", "regrow")
NOT_DIFFERENTIABLE = [name for name in OPS if name not in GRAD_ARGS and name not in SELECTION]


def test_backward_building_blocks_are_known():
    assert {"csr_spmm_t", "csr_sddmm", "bsr_spmm_t", "bsr_sddmm", "sparse_conv2d_dx", "sparse_conv2d_dw"} <= set(NOT_DIFFERENTIABLE)


@pytest.mark.parametrize("name", NOT_DIFFERENTIABLE)
def test_backward_only_ops_refuse_backward(name):
    opdef = OPS[name]
    args = next(s for s in sample_inputs(name, dtype=torch.float64, seed=3) if tensors_nonempty(s))
    leaves = requires_grad_floats(args)
    outs = opdef.op(*leaves)
    out = outs[0] if isinstance(outs, (tuple, list)) else outs
    assert out.requires_grad
    with pytest.raises(RuntimeError, match="not differentiable"):
        out.sum().backward()


def tensors_nonempty(args):
    return all(a.numel() > 0 for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())


@pytest.mark.parametrize("path", ["op", "eager"])
@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("name", list(GRAD_ARGS))
def test_double_backward_is_refused_with_a_clear_error(name, backend, path):
    """The backward formulas call kernels without derivatives of their own: create_graph=True must
    raise, naming the op, instead of returning a gradient that silently is not differentiable."""
    run = _caller(name, path)
    args = sample_inputs(name, dtype=torch.float64, seed=3)[1]
    positions = [j for j in GRAD_ARGS[name] if isinstance(args[j], torch.Tensor)]
    leaves = requires_grad_floats(args, positions)
    with granet_kernels.backend(backend):
        loss = run(*leaves).pow(2).sum()
        with pytest.raises(RuntimeError, match=rf"granet::{name}: double backward \(create_graph=True\) is not supported"):
            torch.autograd.grad(loss, [leaves[j] for j in positions], create_graph=True)
        grads = torch.autograd.grad(run(*leaves).pow(2).sum(), [leaves[j] for j in positions])  # first order is fine
    assert all(g.shape == leaves[j].shape for g, j in zip(grads, positions))


@pytest.mark.parametrize("path", ["op", "eager"])
@pytest.mark.parametrize("name", list(GRAD_ARGS))
def test_an_input_modified_in_place_before_the_backward_is_an_error(name, path):
    """As with torch's own ops: a tensor the backward needs (x for dW, the weight for dx), changed in
    place after the forward, makes the backward raise instead of computing gradients from the new
    values. The bias is not needed (its gradient is dy summed): changing it is allowed, as for
    nn.Linear, and so is changing the weight when no dx is asked for."""
    run = _caller(name, path)
    args = sample_inputs(name, dtype=torch.float64, seed=3)[1]
    positions = [j for j in GRAD_ARGS[name] if isinstance(args[j], torch.Tensor)]
    bias = BIAS_ARG.get(name)
    for j in positions:
        leaves = requires_grad_floats(args, positions)
        out = run(*leaves)
        with torch.no_grad():
            leaves[j].mul_(2)
        if j == bias:
            out.sum().backward()
            assert leaves[j].grad is not None
        else:
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                out.sum().backward()
    weight, data = WEIGHT_AND_DATA_ARGS[name]
    leaves = requires_grad_floats(args, (weight,))  # dW only: the weight itself is not needed
    out = run(*leaves)
    expected = torch.autograd.grad(run(*leaves).sum(), leaves[weight])[0]
    with torch.no_grad():
        leaves[weight].mul_(2)
    out.sum().backward()
    torch.testing.assert_close(leaves[weight].grad, expected)


BIAS_ARG = {"csr_linear": 7, "masked_matmul": 3, "masked_conv2d": 6, "sparse_conv2d": 8}
WEIGHT_AND_DATA_ARGS = {"csr_spmm": (2, 3), "csr_linear": (6, 0), "bsr_spmm": (2, 3), "masked_matmul": (1, 0),
                        "masked_conv2d": (1, 0), "sparse_conv2d": (3, 0)}


@pytest.mark.parametrize("grad_enabled", [True, False])
def test_forward_mode_ad_says_it_is_not_supported(grad_enabled):
    """Dual inputs get a clear error (no jvp), never an output whose tangent was silently dropped."""
    import torch.autograd.forward_ad as fwAD

    layer = granet_kernels.SparseLinear(12, 7, density=0.4, layout="csr")
    x, t = torch.randn(4, 12), torch.randn(4, 12)
    with fwAD.dual_level(), torch.set_grad_enabled(grad_enabled):
        with pytest.raises(NotImplementedError, match="jvp"):
            layer(fwAD.make_dual(x, t))
