"""FLOP formulas seen by torch.utils.flop_counter.FlopCounterMode: the multiply-adds the sparse
ops really do (2 per stored nonzero and row of the batch), not those of the dense equivalent."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from granet_kernels import ops
from granet_kernels.ops.samples import sample_inputs
from granet_testing import requires_grad_floats


def _count(fn) -> tuple[int, dict]:
    mode = FlopCounterMode(display=False)
    with mode:
        fn()
    return mode.get_total_flops(), mode.get_flop_counts()


@pytest.mark.parametrize("index", [1, 4, 5])
def test_csr_spmm_forward_and_backward(index):
    crow, col, values, x = requires_grad_floats(sample_inputs("csr_spmm", seed=index)[index])
    nnz, n = col.numel(), x.shape[0]
    assert nnz > 0
    forward, _ = _count(lambda: ops.csr_spmm(crow, col, values, x))
    assert forward == 2 * nnz * n

    def step():
        ops.csr_spmm(crow, col, values, x).sum().backward()

    total, by_op = _count(step)
    # Backward: the gradient of x (dy @ W) and of the values (dy^T x at the nonzeros), 2 * nnz * N each.
    assert total == 3 * forward, by_op


def test_csr_spmm_backward_of_one_input():
    crow, col, values, x = sample_inputs("csr_spmm", seed=2)[4]
    nnz, n = col.numel(), x.shape[0]
    for leaves in ((values.clone().requires_grad_(), x), (values, x.clone().requires_grad_())):
        total, by_op = _count(lambda: ops.csr_spmm(crow, col, *leaves).sum().backward())
        assert total == 2 * (2 * nnz * n), by_op


@pytest.mark.parametrize("index", [1, 3, 4])
def test_masked_matmul_forward(index):
    x, weight, mask, bias = sample_inputs("masked_matmul", seed=index)[index]
    total, by_op = _count(lambda: ops.masked_matmul(x, weight, mask, bias))
    assert total == 2 * x.shape[0] * int(mask.sum()), by_op


def test_masked_matmul_counts_the_mask_not_the_weight():
    x = torch.randn(5, 8)
    weight = torch.randn(6, 8)
    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[1, 2] = mask[4, 7] = True
    assert _count(lambda: ops.masked_matmul(x, weight, mask))[0] == 2 * 5 * 2


@pytest.mark.parametrize("index", [1, 3, 4])
def test_bsr_spmm_forward(index):
    crow, col, values, x = sample_inputs("bsr_spmm", seed=index)[index]
    nnzb, bs = col.numel(), values.shape[-1]
    assert _count(lambda: ops.bsr_spmm(crow, col, values, x))[0] == 2 * nnzb * bs * bs * x.shape[0]


def test_bsr_spmm_forward_and_backward():
    crow, col, values, x = requires_grad_floats(sample_inputs("bsr_spmm", seed=3)[3])
    forward = 2 * col.numel() * values.shape[-1] ** 2 * x.shape[0]
    total, by_op = _count(lambda: ops.bsr_spmm(crow, col, values, x).sum().backward())
    assert total == 3 * forward, by_op


def test_bsr_spmm_backward_of_one_input():
    # only the gradient asked for is computed (a first layer's input needs none)
    crow, col, values, x = sample_inputs("bsr_spmm", seed=3)[3]
    forward = 2 * col.numel() * values.shape[-1] ** 2 * x.shape[0]
    for leaves in ((values.clone().requires_grad_(), x), (values, x.clone().requires_grad_())):
        total, by_op = _count(lambda: ops.bsr_spmm(crow, col, *leaves).sum().backward())
        assert total == 2 * forward, by_op


@pytest.mark.parametrize("index", [1, 2, 4])
def test_sparse_conv2d_forward(index):
    input, crow, col, values, ks, stride, padding, dilation, bias = sample_inputs("sparse_conv2d", seed=index)[index]
    out = ops.sparse_conv2d(input, crow, col, values, ks, stride, padding, dilation, bias)
    h_out, w_out = out.shape[2:]
    total, by_op = _count(lambda: ops.sparse_conv2d(input, crow, col, values, ks, stride, padding, dilation, bias))
    assert total == 2 * col.numel() * input.shape[0] * h_out * w_out, by_op


def test_sparse_conv2d_forward_and_backward():
    args = sample_inputs("sparse_conv2d", seed=5)[2]
    input, crow, col, values = requires_grad_floats(args[:4])
    ks, stride, padding, dilation, bias = args[4:]
    out = ops.sparse_conv2d(input, crow, col, values, ks, stride, padding, dilation, bias)
    forward = 2 * col.numel() * input.shape[0] * out.shape[2] * out.shape[3]
    total, by_op = _count(
        lambda: ops.sparse_conv2d(input, crow, col, values, ks, stride, padding, dilation, bias).sum().backward()
    )
    assert total == 3 * forward, by_op


def test_csr_linear_forward_and_backward():
    x, crow, col, ccol, row, perm, values, bias = requires_grad_floats(sample_inputs("csr_linear", seed=4)[5])
    nnz, n = col.numel(), x.shape[0]
    forward, _ = _count(lambda: ops.csr_linear(x, crow, col, ccol, row, perm, values, bias))
    assert forward == 2 * nnz * n
    total, by_op = _count(lambda: ops.csr_linear(x, crow, col, ccol, row, perm, values, bias).sum().backward())
    # The bias gradient is a sum over the batch, counted as no multiply-adds.
    assert total == 3 * forward, by_op


def test_masked_backward_helpers_match_torch_and_count_sparse_products(seed):
    # The masked layouts' backward ops: dW zeroed outside the mask, dx through the masked weight.
    g = torch.Generator().manual_seed(seed)
    x, dy = torch.randn(6, 9, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(5, 9, generator=g) < 0.4
    total, _ = _count(lambda: torch.ops.granet._masked_weight_grad(dy, x, mask))
    assert total == 2 * 6 * int(mask.sum())
    torch.testing.assert_close(torch.ops.granet._masked_weight_grad(dy, x, mask), (dy.t() @ x) * mask)
    input = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 2, generator=g, dtype=torch.float64)
    cmask = torch.rand(4, 3, 3, 2, generator=g) < 0.5
    geometry = ([2, 1], [1, 0], [1, 2])
    grad = torch.randn(F.conv2d(input, weight, None, *geometry).shape, generator=g, dtype=torch.float64)
    leaves = [input.clone().requires_grad_(), weight.clone().requires_grad_()]
    F.conv2d(leaves[0], leaves[1] * cmask, None, *geometry).backward(grad)
    for weight_is_masked, w in ((False, weight), (True, weight * cmask)):
        for need_input, need_weight in ((True, True), (True, False), (False, True)):
            total, _ = _count(lambda: torch.ops.granet._masked_conv2d_backward(
                grad, input, w, cmask, *geometry, weight_is_masked, need_input, need_weight))
            assert total == (need_input + need_weight) * 2 * int(cmask.sum()) * grad[:, 0].numel()
            dx, dw = torch.ops.granet._masked_conv2d_backward(grad, input, w, cmask, *geometry, weight_is_masked,
                                                              need_input, need_weight)
            if need_input:
                torch.testing.assert_close(dx, leaves[0].grad)
            if need_weight:
                torch.testing.assert_close(dw, leaves[1].grad)
