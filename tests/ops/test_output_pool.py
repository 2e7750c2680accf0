"""Large outputs of the CPU kernels come from a cache of blocks (csrc/cpu/output_pool.cpp): a freed
output's block serves the next call, live outputs never share memory, and the tensors behave like
any CPU tensor (resize, clone, pickle, in-place ops)."""

import io
import pickle

import torch

import granet_kernels as gk
from granet_kernels.ops.samples import random_csr

# Outputs of at least 1 MB are pooled: x [512, 1024] @ W^T [1024, 1024] gives a 2 MB y.
N, K, M = 512, 1024, 1024


def _operands(seed=0):
    g = torch.Generator().manual_seed(seed)
    crow, col, values = random_csr(M, K, 0.05, gen=g)
    return crow, col, values, torch.randn(N, K, generator=g)


def _dense(crow, col, values):
    w = torch.zeros(M, K)
    rows = torch.repeat_interleave(torch.arange(M), crow.diff().long())
    w[rows, col.long()] = values
    return w


def test_freed_output_block_is_reused():
    crow, col, values, x = _operands()
    y = gk.ops.csr_spmm(crow, col, values, x)
    ptr = y.data_ptr()
    del y
    y2 = gk.ops.csr_spmm(crow, col, values, x)
    assert y2.data_ptr() == ptr
    torch.testing.assert_close(y2, x @ _dense(crow, col, values).t(), rtol=1e-5, atol=1e-4)


def test_live_outputs_never_share_memory():
    crow, col, values, x = _operands()
    outs = [gk.ops.csr_spmm(crow, col, values * (i + 1), x) for i in range(4)]
    assert len({o.data_ptr() for o in outs}) == 4
    ref = x @ _dense(crow, col, values).t()
    for i, o in enumerate(outs):
        torch.testing.assert_close(o, ref * (i + 1), rtol=1e-5, atol=1e-3)


def test_pooled_tensor_is_an_ordinary_cpu_tensor():
    crow, col, values, x = _operands()
    y = gk.ops.csr_spmm(crow, col, values, x)
    expected = y.clone()
    assert y.is_contiguous() and y.device.type == "cpu" and y.shape == (N, M)
    y.add_(1.0).sub_(1.0)
    torch.testing.assert_close(y, expected)
    buf = io.BytesIO()
    torch.save(y, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf), expected)
    torch.testing.assert_close(pickle.loads(pickle.dumps(y)), expected)
    y.resize_(2 * N, M)  # grows through the pool's allocator, keeps the first rows
    torch.testing.assert_close(y[:N], expected)
    y.resize_(3, 5)
    assert y.shape == (3, 5)


def test_backward_outputs_are_pooled_and_correct():
    crow, col, values, x = _operands(1)
    layer = gk.SparseLinear(K, M, density=0.05, layout="csr")
    x = x.requires_grad_()
    for _ in range(3):  # the second and third steps reuse the first step's blocks
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()
        w = layer.to_dense().weight
        torch.testing.assert_close(x.grad, torch.ones(N, M) @ w, rtol=1e-5, atol=1e-3)
