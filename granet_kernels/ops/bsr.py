"""Block-sparse (BSR) products of W [M, K] with square blocks bs x bs: values [nnzb, bs, bs]."""

from __future__ import annotations

import torch

from granet_kernels.ops import _checks as C
from granet_kernels.ops import reference
from granet_kernels.ops._autograd import call, register_linear_autograd, register_not_differentiable
from granet_kernels.ops._index import transpose_index
from granet_kernels.ops._registry import Kernel, register_op


def _check_blocks(op, idx_name, idx, values):
    C.tensor(op, "values", values, dim=3, dtypes=C.FLOAT_DTYPES)
    if values.shape[1] != values.shape[2] or values.shape[1] < 1:
        raise ValueError(f"{op}: values must hold square blocks [nnzb, bs, bs], got shape {tuple(values.shape)}")
    if values.shape[0] != idx.numel():
        raise ValueError(f"{op}: values has {values.shape[0]} blocks but {idx_name} has {idx.numel()} entries")


def _check_multiple(op, name, t, dim, bs):
    if t.shape[dim] % bs:
        raise ValueError(f"{op}: {name}.shape[{dim}] = {t.shape[dim]} must be a multiple of the block size {bs}")


def _check_spmm(crow, col, values, x):
    op = "granet::bsr_spmm"
    C.compressed_index(op, "crow_indices", crow, "col_indices", col)
    _check_blocks(op, "col_indices", col, values)
    C.tensor(op, "x", x, dim=2, dtypes=C.FLOAT_DTYPES)
    C.same_dtype(op, [("x", x), ("values", values)])
    C.same_device(op, [("x", x), ("crow_indices", crow), ("col_indices", col), ("values", values)])
    _check_multiple(op, "x", x, 1, values.shape[1])


def _check_spmm_values(crow, col, values, x):
    bound = x.shape[1] // values.shape[1]
    C.compressed_index_values("granet::bsr_spmm", "crow_indices", crow, "col_indices", col, bound)


bsr_spmm_def = register_op(
    "bsr_spmm",
    check=_check_spmm,
    check_values=_check_spmm_values,
    reference=reference.bsr_spmm,
    fake_output=lambda crow, col, values, x: x.new_empty(x.shape[0], (crow.shape[0] - 1) * values.shape[1]),
    flops=lambda crow, col, values, x: 2 * values.numel() * x.shape[0],
    cuda_order=("triton", "reference"),
    kernels={"cpu": Kernel(lambda *a: torch.ops.granet._native_bsr_spmm(*a), (torch.float32, torch.float64))},
)


def _check_spmm_t(ccol, row, perm, values, dy):
    op = "granet::bsr_spmm_t"
    C.compressed_index(op, "ccol_indices", ccol, "row_indices", row)
    _check_blocks(op, "row_indices", row, values)
    C.tensor(op, "perm", perm, dim=1, dtypes=C.INDEX_DTYPES)
    if perm.numel() != row.numel():
        raise ValueError(f"{op}: perm has {perm.numel()} entries but row_indices has {row.numel()}")
    C.tensor(op, "dy", dy, dim=2, dtypes=C.FLOAT_DTYPES)
    C.same_dtype(op, [("dy", dy), ("values", values)])
    C.same_device(op, [("dy", dy), ("ccol_indices", ccol), ("row_indices", row), ("perm", perm), ("values", values)])
    _check_multiple(op, "dy", dy, 1, values.shape[1])


def _check_spmm_t_values(ccol, row, perm, values, dy):
    op = "granet::bsr_spmm_t"
    C.compressed_index_values(op, "ccol_indices", ccol, "row_indices", row, dy.shape[1] // values.shape[1])
    C.permutation(op, "perm", perm, values.shape[0])


bsr_spmm_t_def = register_op(
    "bsr_spmm_t",
    check=_check_spmm_t,
    check_values=_check_spmm_t_values,
    reference=reference.bsr_spmm_t,
    fake_output=lambda ccol, row, perm, values, dy: dy.new_empty(dy.shape[0], (ccol.shape[0] - 1) * values.shape[1]),
    flops=lambda ccol, row, perm, values, dy: 2 * values.numel() * dy.shape[0],
    cuda_order=("triton", "reference"),
    kernels={"cpu": Kernel(lambda *a: torch.ops.granet._native_bsr_spmm_t(*a), (torch.float32, torch.float64))},
)


def _check_sddmm(crow, col, dy, x, blocksize):
    op = "granet::bsr_sddmm"
    C.compressed_index(op, "crow_indices", crow, "col_indices", col)
    if not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"{op}: blocksize must be a positive integer, got {blocksize!r}")
    C.tensor(op, "dy", dy, dim=2, dtypes=C.FLOAT_DTYPES)
    C.tensor(op, "x", x, dim=2, dtypes=C.FLOAT_DTYPES)
    C.same_dtype(op, [("x", x), ("dy", dy)])
    C.same_device(op, [("x", x), ("dy", dy), ("crow_indices", crow), ("col_indices", col)])
    C.size(op, "dy", dy, 0, x.shape[0], "the batch size of x")
    C.size(op, "dy", dy, 1, (crow.shape[0] - 1) * blocksize, "block rows * blocksize")
    _check_multiple(op, "x", x, 1, blocksize)


def _check_sddmm_values(crow, col, dy, x, blocksize):
    C.compressed_index_values("granet::bsr_sddmm", "crow_indices", crow, "col_indices", col, x.shape[1] // blocksize)


bsr_sddmm_def = register_op(
    "bsr_sddmm",
    check=_check_sddmm,
    check_values=_check_sddmm_values,
    reference=reference.bsr_sddmm,
    fake_output=lambda crow, col, dy, x, bs: x.new_empty(col.shape[0], bs, bs),
    flops=lambda crow, col, dy, x, bs: 2 * col.numel() * bs * bs * x.shape[0],
    cuda_order=("triton", "reference"),
    kernels={"cpu": Kernel(lambda *a: torch.ops.granet._native_bsr_sddmm(*a), (torch.float32, torch.float64))},
)


def _spmm_backward(saved, grad, needs, hint=None):
    crow, col, values, x = saved
    bs = values.shape[1]
    grad_values = grad_x = None  # only the products asked for (a first layer needs no dx)
    if needs[2]:
        grad_values = torch.ops.granet.bsr_sddmm(crow, col, grad, x, bs)
    if needs[3]:
        ccol, row, perm = transpose_index(crow, col, x.shape[1] // bs)
        grad_x = torch.ops.granet.bsr_spmm_t(ccol, row, perm, values, grad)
    return None, None, grad_values, grad_x


register_linear_autograd(bsr_spmm_def, _spmm_backward, needed_for={2: (3,), 3: (2,)})
register_not_differentiable(bsr_spmm_t_def, "use bsr_spmm, whose backward calls it")
register_not_differentiable(bsr_sddmm_def, "use bsr_spmm, whose backward calls it")


def bsr_spmm(crow_indices, col_indices, values, x):
    """y = x @ W^T for block-sparse W (values [nnzb, bs, bs]); x [N, K] (K % bs == 0) -> [N, rows*bs]."""
    return call(bsr_spmm_def, crow_indices, col_indices, values, x)


def bsr_spmm_t(ccol_indices, row_indices, perm, values, dy):
    """dx = dy @ W through the transposed block index (blocks read through perm, transposed in place)."""
    return torch.ops.granet.bsr_spmm_t(ccol_indices, row_indices, perm, values, dy)


def bsr_sddmm(crow_indices, col_indices, dy, x, blocksize):
    """(dy^T @ x) sampled at the nonzero blocks: -> [nnzb, bs, bs] in BSR order."""
    return torch.ops.granet.bsr_sddmm(crow_indices, col_indices, dy, x, blocksize)
