"""Pure-torch references of every granet op: the oracles the tests compare each backend with.

They favour obvious correctness over speed (most build the dense weight). Arguments are the
op's schema arguments, already checked by the op.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from granet_kernels.ops._index import csr_rows


def csr_to_dense(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, n_cols: int) -> torch.Tensor:
    """Dense [rows, n_cols] matrix; duplicate positions add up (as in the sparse products)."""
    rows = csr_rows(crow, col.numel())
    dense = values.new_zeros(crow.numel() - 1, n_cols)
    return dense.index_put_((rows, col.long()), values, accumulate=True)


def bsr_to_dense(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, n_cols: int) -> torch.Tensor:
    """Dense [block_rows*bs, n_cols] matrix from blocks values [nnzb, bs, bs]."""
    bs = values.shape[-1]
    rows = csr_rows(crow, col.numel())
    blocks = values.new_zeros(crow.numel() - 1, n_cols // bs, bs, bs)
    blocks.index_put_((rows, col.long()), values, accumulate=True)
    return blocks.permute(0, 2, 1, 3).reshape((crow.numel() - 1) * bs, n_cols)


def masked_matmul(x, weight, mask, bias=None):
    return F.linear(x, weight * mask.to(weight.dtype), bias)


def masked_conv2d(input, weight, mask, stride, padding, dilation, bias=None):
    return F.conv2d(input, weight * mask.to(weight.dtype), bias, stride, padding, dilation)


def csr_spmm(crow, col, values, x):
    return x @ csr_to_dense(crow, col, values, x.shape[1]).T


def csr_spmm_t(ccol, row, perm, values, dy):
    # W^T in CSR is (ccol, row, values[perm]); dy @ W = dy @ (W^T)^T.
    return csr_spmm(ccol, row, values[perm.long()], dy)


def sampled_dense_product(dy, x, rows, cols):
    """(dy^T @ x)[rows, cols]: one dense [M, K] product, then the nonzeros' entries. Memory O(M K),
    as the dense weight of the forward; a per-nonzero product over the batch ([N, nnz]) asked for
    41-205 GiB at the GPU MLP shape (4096 -> 16384, 8192 tokens), where this runs on CUDA."""
    return (dy.t() @ x)[rows, cols]


def csr_linear_backward(ccol, row, perm, values, dy, x):
    dx = csr_spmm_t(ccol, row, perm, values, dy)
    cols = csr_rows(ccol, row.numel())  # the column of every CSC slot
    per_slot = sampled_dense_product(dy, x, row.long(), cols)
    return dx, torch.zeros_like(per_slot).index_put_((perm.long(),), per_slot)


def csr_sddmm(crow, col, dy, x):
    return sampled_dense_product(dy, x, csr_rows(crow, col.numel()), col.long())


def bsr_spmm(crow, col, values, x):
    return x @ bsr_to_dense(crow, col, values, x.shape[1]).T


def bsr_spmm_t(ccol, row, perm, values, dy):
    return bsr_spmm(ccol, row, values[perm.long()].transpose(-1, -2), dy)


def bsr_sddmm(crow, col, dy, x, blocksize):
    n = dy.shape[0]
    rows = csr_rows(crow, col.numel())
    dy_blocks = dy.reshape(n, dy.shape[1] // blocksize, blocksize)[:, rows]  # [N, nnzb, bs]
    x_blocks = x.reshape(n, x.shape[1] // blocksize, blocksize)[:, col.long()]
    return torch.einsum("npi,npj->pij", dy_blocks, x_blocks)


def conv_weight(crow, col, values, in_channels, kernel_size):
    kh, kw = kernel_size
    dense = csr_to_dense(crow, col, values, in_channels * kh * kw)
    return dense.reshape(-1, in_channels, kh, kw)


def sparse_conv2d(input, crow, col, values, kernel_size, stride, padding, dilation, bias=None):
    weight = conv_weight(crow, col, values, input.shape[1], kernel_size)
    return F.conv2d(input, weight, bias, stride, padding, dilation)


def sparse_conv2d_dx(grad_output, crow, col, values, input_shape, kernel_size, stride, padding, dilation):
    weight = conv_weight(crow, col, values, input_shape[1], kernel_size)
    return torch.nn.grad.conv2d_input(list(input_shape), weight, grad_output, stride, padding, dilation)


def sparse_conv2d_dw(grad_output, input, crow, col, kernel_size, stride, padding, dilation):
    kh, kw = kernel_size
    shape = [grad_output.shape[1], input.shape[1], kh, kw]
    dense = torch.nn.grad.conv2d_weight(input, shape, grad_output, stride, padding, dilation)
    rows = csr_rows(crow, col.numel())
    return dense.reshape(shape[0], -1)[rows, col.long()]


def topk_threshold(tensors: Sequence[torch.Tensor], k: int):
    flat = torch.cat([t.detach().reshape(-1).abs() for t in tensors])
    return torch.kthvalue(flat, flat.numel() - k + 1).values


def regrow(mask, score, k):
    inactive = torch.nonzero(~mask.reshape(-1)).reshape(-1)
    candidate_scores = score.detach().reshape(-1)[inactive].abs()
    # A stable descending sort keeps the lower index first among equal scores.
    order = torch.sort(candidate_scores, descending=True, stable=True).indices[:k]
    return torch.sort(inactive[order]).values
