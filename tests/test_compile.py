"""torch.compile(fullgraph=True) through the ops, forward and backward, matches eager."""

from __future__ import annotations

import warnings

import pytest
import torch

from granet_kernels import ops
from granet_kernels.ops.samples import sample_inputs


def _inductor_unusable() -> str | None:
    """Why the default (inductor) backend cannot compile on this machine, else None."""
    try:
        from torch._inductor import cpp_builder

        cpp_builder.get_cpp_compiler()
    except Exception as error:  # noqa: BLE001  (any failure to find a C++ toolchain)
        return f"{type(error).__name__}: {error}"
    return None


def _step(crow, col, values, x, weight, mask, bias):
    """A sparse layer and a masked layer, chained, and a loss."""
    hidden = ops.csr_spmm(crow, col, values, x)
    out = ops.masked_matmul(torch.relu(hidden), weight, mask, bias)
    return (out * out).mean()


def _inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    crow, col, values, x = sample_inputs("csr_spmm", seed=seed)[4]  # 64 x 70 -> 40, empty rows/cols
    m = crow.numel() - 1
    weight = torch.randn(9, m, generator=gen)
    mask = torch.rand(9, m, generator=gen) < 0.3
    bias = torch.randn(9, generator=gen)
    return [crow, col, values, x.contiguous(), weight, mask, bias]


def _leaves(args):
    return [a.detach().clone().requires_grad_() if a.is_floating_point() else a for a in args]


def test_compile_fullgraph_matches_eager():
    reason = _inductor_unusable()
    backend = "inductor"
    if reason is not None:
        warnings.warn(f"inductor cannot compile here ({reason}); falling back to the eager backend")
        backend = "eager"
    torch._dynamo.reset()
    try:
        compiled = torch.compile(_step, fullgraph=True, backend=backend)
        for seed in (0, 1):  # the second call reuses the graph (same shapes, new values and mask)
            args = _inputs(seed)
            eager_leaves, compiled_leaves = _leaves(args), _leaves(args)
            expected = _step(*eager_leaves)
            expected.backward()
            got = compiled(*compiled_leaves)
            got.backward()
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
            for e, g in zip(eager_leaves, compiled_leaves):
                if e.is_floating_point():
                    torch.testing.assert_close(g.grad, e.grad, rtol=1e-5, atol=1e-6)
    finally:
        torch._dynamo.reset()


def test_compile_traces_ops_without_graph_breaks():
    """The ops appear as single nodes of the captured graph (no fallback to Python)."""
    args = _inputs(2)
    explanation = torch._dynamo.explain(_step)(*args)
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    targets = {str(node.target) for graph in explanation.graphs for node in graph.graph.nodes if node.op == "call_function"}
    assert any("csr_spmm" in t for t in targets), targets
    assert any("masked_matmul" in t for t in targets), targets


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compile_on_cuda_matches_eager():
    torch._dynamo.reset()
    try:
        compiled = torch.compile(_step, fullgraph=True)
        args = [a.cuda() for a in _inputs(3)]
        eager_leaves, compiled_leaves = _leaves(args), _leaves(args)
        expected = _step(*eager_leaves)
        expected.backward()
        got = compiled(*compiled_leaves)
        got.backward()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        for e, g in zip(eager_leaves, compiled_leaves):
            if e.is_floating_point():
                torch.testing.assert_close(g.grad, e.grad, rtol=1e-4, atol=1e-5)
    finally:
        torch._dynamo.reset()
