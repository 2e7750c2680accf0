"""CSR products of a sparse weight W [M, K]: y = x @ W^T, dx = dy @ W, dW = (dy^T x) at W's nonzeros."""

from __future__ import annotations

import threading

import torch
from torch.utils.flop_counter import register_flop_formula

from granet_kernels.ops import _checks as C
from granet_kernels.ops import reference
from granet_kernels.ops._index import transpose_index
from granet_kernels.ops._registry import Kernel, register_op, select_backend
from granet_kernels.ops._autograd import BACKWARD_HINT, call, register_linear_autograd, register_not_differentiable

NATIVE_DTYPES = (torch.float32, torch.float64)


def _check_csr_operand(op, ptr_name, ptr, idx_name, idx, values, dense_name, dense):
    C.compressed_index(op, ptr_name, ptr, idx_name, idx)
    C.tensor(op, "values", values, dim=1, dtypes=C.FLOAT_DTYPES)
    C.tensor(op, dense_name, dense, dim=2, dtypes=C.FLOAT_DTYPES)
    if values.numel() != idx.numel():
        raise ValueError(f"{op}: values has {values.numel()} entries but {idx_name} has {idx.numel()}; one value per index")
    C.same_dtype(op, [(dense_name, dense), ("values", values)])
    C.same_device(op, [(dense_name, dense), (ptr_name, ptr), (idx_name, idx), ("values", values)])


# --- csr_spmm -------------------------------------------------------------------------------------

def _check_spmm(crow, col, values, x):
    _check_csr_operand("granet::csr_spmm", "crow_indices", crow, "col_indices", col, values, "x", x)


def _check_spmm_values(crow, col, values, x):
    C.compressed_index_values("granet::csr_spmm", "crow_indices", crow, "col_indices", col, x.shape[1])


csr_spmm_def = register_op(
    "csr_spmm",
    check=_check_spmm,
    check_values=_check_spmm_values,
    reference=reference.csr_spmm,
    fake_output=lambda crow, col, values, x: x.new_empty(x.shape[0], crow.shape[0] - 1),
    flops=lambda crow, col, values, x: 2 * col.numel() * x.shape[0],
    kernels={
        "cpu": Kernel(lambda *a: torch.ops.granet._native_csr_spmm(*a), NATIVE_DTYPES),
        "cuda": Kernel(lambda *a: torch.ops.granet._native_csr_spmm(*a), NATIVE_DTYPES),
    },
)


# --- csr_spmm_t -----------------------------------------------------------------------------------

def _check_spmm_t(ccol, row, perm, values, dy):
    op = "granet::csr_spmm_t"
    _check_csr_operand(op, "ccol_indices", ccol, "row_indices", row, values, "dy", dy)
    C.tensor(op, "perm", perm, dim=1, dtypes=C.INDEX_DTYPES)
    if perm.numel() != row.numel():
        raise ValueError(f"{op}: perm has {perm.numel()} entries but row_indices has {row.numel()}")
    C.same_device(op, [("dy", dy), ("perm", perm)])


def _check_spmm_t_values(ccol, row, perm, values, dy):
    op = "granet::csr_spmm_t"
    C.compressed_index_values(op, "ccol_indices", ccol, "row_indices", row, dy.shape[1])
    C.permutation(op, "perm", perm, values.numel())


csr_spmm_t_def = register_op(
    "csr_spmm_t",
    check=_check_spmm_t,
    check_values=_check_spmm_t_values,
    reference=reference.csr_spmm_t,
    fake_output=lambda ccol, row, perm, values, dy: dy.new_empty(dy.shape[0], ccol.shape[0] - 1),
    flops=lambda ccol, row, perm, values, dy: 2 * row.numel() * dy.shape[0],
    kernels={"cpu": Kernel(lambda *a: torch.ops.granet._native_csr_spmm_t(*a), NATIVE_DTYPES)},
)


# --- csr_sddmm ------------------------------------------------------------------------------------

def _check_sddmm(crow, col, dy, x):
    op = "granet::csr_sddmm"
    C.compressed_index(op, "crow_indices", crow, "col_indices", col)
    C.tensor(op, "dy", dy, dim=2, dtypes=C.FLOAT_DTYPES)
    C.tensor(op, "x", x, dim=2, dtypes=C.FLOAT_DTYPES)
    C.same_dtype(op, [("x", x), ("dy", dy)])
    C.same_device(op, [("x", x), ("dy", dy), ("crow_indices", crow), ("col_indices", col)])
    C.size(op, "dy", dy, 0, x.shape[0], "the batch size of x")
    C.size(op, "dy", dy, 1, crow.shape[0] - 1, "the rows of the pattern, len(crow_indices) - 1")


def _check_sddmm_values(crow, col, dy, x):
    C.compressed_index_values("granet::csr_sddmm", "crow_indices", crow, "col_indices", col, x.shape[1])


csr_sddmm_def = register_op(
    "csr_sddmm",
    check=_check_sddmm,
    check_values=_check_sddmm_values,
    reference=reference.csr_sddmm,
    fake_output=lambda crow, col, dy, x: x.new_empty(col.shape[0]),
    flops=lambda crow, col, dy, x: 2 * col.numel() * x.shape[0],
    kernels={"cpu": Kernel(lambda *a: torch.ops.granet._native_csr_sddmm(*a), NATIVE_DTYPES)},
)


# --- csr_linear_backward --------------------------------------------------------------------------

def _check_linear_backward(ccol, row, perm, values, dy, x):
    op = "granet::csr_linear_backward"
    _check_spmm_t(ccol, row, perm, values, dy)
    C.tensor(op, "x", x, dim=2, dtypes=C.FLOAT_DTYPES)
    C.same_dtype(op, [("dy", dy), ("x", x)])
    C.same_device(op, [("dy", dy), ("x", x)])
    C.size(op, "x", x, 0, dy.shape[0], "the batch size of dy")
    C.size(op, "x", x, 1, ccol.shape[0] - 1, "the columns of the pattern, len(ccol_indices) - 1")


def _check_linear_backward_values(ccol, row, perm, values, dy, x):
    op = "granet::csr_linear_backward"
    C.compressed_index_values(op, "ccol_indices", ccol, "row_indices", row, dy.shape[1])
    # dvalues[perm[s]] is written once per CSC slot s: only a permutation defines every entry once
    C.permutation(op, "perm", perm, values.numel())


csr_linear_backward_def = register_op(
    "csr_linear_backward",
    check=_check_linear_backward,
    check_values=_check_linear_backward_values,
    reference=reference.csr_linear_backward,
    fake_output=lambda ccol, row, perm, values, dy, x: (x.new_empty(x.shape), x.new_empty(row.shape[0])),
    flops=lambda ccol, row, perm, values, dy, x: 4 * row.numel() * x.shape[0],
    kernels={"cpu": Kernel(lambda *a: torch.ops.granet._native_csr_linear_backward(*a), NATIVE_DTYPES)},
)


# --- csr_linear -----------------------------------------------------------------------------------

def _check_linear(x, crow, col, ccol, row, perm, values, bias=None):
    op = "granet::csr_linear"
    _check_csr_operand(op, "crow_indices", crow, "col_indices", col, values, "x", x)
    _check_csr_operand(op, "ccol_indices", ccol, "row_indices", row, values, "x", x)
    C.tensor(op, "perm", perm, dim=1, dtypes=C.INDEX_DTYPES)
    if perm.numel() != col.numel():
        raise ValueError(f"{op}: perm has {perm.numel()} entries but col_indices has {col.numel()}")
    C.same_device(op, [("x", x), ("perm", perm), ("bias", bias)])
    C.size(op, "x", x, 1, ccol.shape[0] - 1, "the columns of the weight, len(ccol_indices) - 1")
    if bias is not None:
        C.tensor(op, "bias", bias, dim=1)
        C.same_dtype(op, [("x", x), ("bias", bias)])
        C.size(op, "bias", bias, 0, crow.shape[0] - 1, "the rows of the weight, len(crow_indices) - 1")


def _check_linear_values(x, crow, col, ccol, row, perm, values, bias=None):
    op = "granet::csr_linear"
    index, bounds = (crow, col, ccol, row, perm), (x.shape[1], crow.shape[0] - 1)
    if C.remembered(perm, "_granet_linear_checked", index, bounds):  # a module's index: checked once per mask
        return
    C.compressed_index_values(op, "crow_indices", crow, "col_indices", col, x.shape[1])
    C.compressed_index_values(op, "ccol_indices", ccol, "row_indices", row, crow.shape[0] - 1)
    # the forward reads the CSR index, the backward the CSC one: they must describe the same W
    C.transposed_index(op, crow, col, ccol, row, perm)
    C.remember(perm, "_granet_linear_checked", index, bounds)


def _linear_reference(x, crow, col, ccol, row, perm, values, bias=None):
    y = reference.csr_spmm(crow, col, values, x)
    return y + bias if bias is not None else y


# Set by csr_linear() around a call whose backward will want dW: the CPU kernel then keeps x packed in
# batch panels (as its SpMM needs it anyway) and hands the panels to the backward, which skips
# packing x again (one pass over x less per training step: 2-3% of the step at d = 0.02). The cost
# is one packed copy of the layer's input, alive from forward to backward.
_keep_panels = threading.local()


def _linear_cpu(x, crow, col, ccol, row, perm, values, bias=None):
    # One row needs no panels: the backward reads x in place then (the CSR-order one-row kernel),
    # and the one-row forward (no packing, one lane per nonzero instead of a whole panel's) took the
    # batch-1 training step from 1148 to 876 us at W 4096^2, d = 0.05 (Zen 5, 1 thread).
    if getattr(_keep_panels, "on", False) and x.shape[0] != 1:
        y, panels = torch.ops.granet._native_csr_linear_bias_panels(x, crow, col, values, bias)
        setattr(y, BACKWARD_HINT, panels)
        return y
    return torch.ops.granet._native_csr_linear_bias(x, crow, col, values, bias)


csr_linear_def = register_op(
    "csr_linear",
    check=_check_linear,
    check_values=_check_linear_values,
    reference=_linear_reference,
    fake_output=lambda x, crow, col, ccol, row, perm, values, bias=None: x.new_empty(x.shape[0], crow.shape[0] - 1),
    flops=lambda x, crow, col, ccol, row, perm, values, bias=None: 2 * col.numel() * x.shape[0],
    kernels={"cpu": Kernel(_linear_cpu, NATIVE_DTYPES)},
)


# --- autograd -------------------------------------------------------------------------------------

def _spmm_backward(saved, grad, needs, hint=None):
    crow, col, values, x = saved
    need_values, need_x = needs[2], needs[3]
    if need_values and not need_x:
        return None, None, torch.ops.granet.csr_sddmm(crow, col, grad, x), None
    ccol, row, perm = transpose_index(crow, col, x.shape[1])
    if not need_values:
        return None, None, None, torch.ops.granet.csr_spmm_t(ccol, row, perm, values, grad)
    grad_x, grad_values = torch.ops.granet.csr_linear_backward(ccol, row, perm, values, grad, x)
    return None, None, grad_values, grad_x


register_linear_autograd(csr_spmm_def, _spmm_backward, needed_for={2: (3,), 3: (2,)})


# The CPU kernel of the training step's backward with the bias gradient fused (summed while dy is
# packed, not in another pass over dy); called from the autograd formula, so it has a fake impl.
torch.library.register_fake("granet::_native_csr_linear_backward_bias")(
    lambda ccol, row, perm, values, dy, x, x_panels=None, crow=None, col=None: (
        x.new_empty(x.shape), x.new_empty(row.shape[0]), dy.new_empty(dy.shape[1])
    )
)


register_flop_formula(torch.ops.granet._native_csr_linear_backward_bias, get_raw=True)(
    lambda ccol, row, perm, values, dy, x, *args, out_val=None, **kwargs: 4 * row.numel() * x.shape[0]
)


def _fused_backward(grad, x, needs) -> bool:
    return needs[0] and needs[6] and select_backend(csr_linear_backward_def, (grad, x)) == "cpu"


def _linear_backward(saved, grad, needs, hint=None):
    x, crow, col, ccol, row, perm, values, bias = saved
    need_x, need_values = needs[0], needs[6]
    grad_x = grad_values = None
    if _fused_backward(grad, x, needs):
        # The bias gradient comes out of the pass that packs dy, needed or not (it costs nothing).
        panels = hint if isinstance(hint, torch.Tensor) else None
        # With the CSR index as well, a small batch takes the CSR-order kernel (no value gather / dW scatter).
        grad_x, grad_values, grad_bias = torch.ops.granet._native_csr_linear_backward_bias(
            ccol, row, perm, values, grad, x, panels, crow, col
        )
        grad_bias = grad_bias if bias is not None and needs[7] else None
        return grad_x, None, None, None, None, None, grad_values, grad_bias
    if need_x and need_values:
        grad_x, grad_values = torch.ops.granet.csr_linear_backward(ccol, row, perm, values, grad, x)
    elif need_values:
        grad_values = torch.ops.granet.csr_sddmm(crow, col, grad, x)
    elif need_x:
        grad_x = torch.ops.granet.csr_spmm_t(ccol, row, perm, values, grad)
    grad_bias = grad.sum(0) if bias is not None and needs[7] else None
    return grad_x, None, None, None, None, None, grad_values, grad_bias


register_linear_autograd(csr_linear_def, _linear_backward, needed_for={0: (6,), 6: (0,), 7: ()})
register_not_differentiable(csr_spmm_t_def, "use csr_spmm, whose backward calls it")
register_not_differentiable(csr_sddmm_def, "use csr_spmm, whose backward calls it")
register_not_differentiable(csr_linear_backward_def, "use csr_spmm, whose backward calls it")


# --- Python face ----------------------------------------------------------------------------------

def csr_linear(x, crow_indices, col_indices, ccol_indices, row_indices, perm, values, bias=None):
    """y = x @ W^T + bias for W in CSR with its transposed index given (built once per mask change,
    see transpose_index), so the backward pass needs no index work. Differentiable in x, values, bias."""
    args = (x, crow_indices, col_indices, ccol_indices, row_indices, perm, values, bias)
    if (
        # the fused backward (the one that takes the panels) runs when both x and values need grads
        isinstance(values, torch.Tensor) and values.requires_grad and isinstance(x, torch.Tensor)
        and x.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling()
    ):
        _keep_panels.on = True
        try:
            return call(csr_linear_def, *args)
        finally:
            _keep_panels.on = False
    return call(csr_linear_def, *args)


def csr_spmm(crow_indices, col_indices, values, x):
    """y = x @ W^T for W [M, K] in CSR (int32 indices); x [N, K] -> [N, M]. Differentiable in values and x."""
    return call(csr_spmm_def, crow_indices, col_indices, values, x)


def csr_spmm_t(ccol_indices, row_indices, perm, values, dy):
    """dx = dy @ W through W's transposed index (see transpose_index); dy [N, M] -> [N, K]."""
    return torch.ops.granet.csr_spmm_t(ccol_indices, row_indices, perm, values, dy)


def csr_linear_backward(ccol_indices, row_indices, perm, values, dy, x):
    """Both backward products of y = x @ W^T in one pass over W's CSC index: (dx [N, K], dvalues [nnz])."""
    return torch.ops.granet.csr_linear_backward(ccol_indices, row_indices, perm, values, dy, x)


def csr_sddmm(crow_indices, col_indices, dy, x):
    """(dy^T @ x) sampled at the pattern's nonzeros, in CSR order: dy [N, M], x [N, K] -> [nnz]."""
    return torch.ops.granet.csr_sddmm(crow_indices, col_indices, dy, x)
