"""Sparse conv2d: a filter bank W [C_out, C_in, kh, kw] stored as CSR over [C_out, C_in*kh*kw]
(torch's weight flattening order); forward, input gradient and weight gradient at the nonzeros."""

from __future__ import annotations

import torch

from granet_kernels.ops import _checks as C
from granet_kernels.ops import reference
from granet_kernels.ops._autograd import call, register_linear_autograd, register_not_differentiable
from granet_kernels.ops._registry import Kernel, register_op

NATIVE_DTYPES = (torch.float32, torch.float64)


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _check_geometry(op, in_hw, kernel_size, stride, padding, dilation):
    C.positive_ints(op, "kernel_size", kernel_size, 2)
    C.positive_ints(op, "stride", stride, 2)
    C.positive_ints(op, "padding", padding, 2, minimum=0)
    C.positive_ints(op, "dilation", dilation, 2)
    out = [output_size(in_hw[i], kernel_size[i], stride[i], padding[i], dilation[i]) for i in range(2)]
    if min(out) < 1:
        raise ValueError(
            f"{op}: input of spatial size {tuple(in_hw)} is too small for kernel_size {list(kernel_size)}, "
            f"padding {list(padding)}, dilation {list(dilation)} (output would be {out})"
        )
    return out


def _check_filters(op, crow, col, values):
    C.compressed_index(op, "crow_indices", crow, "col_indices", col)
    if values is not None:
        C.tensor(op, "values", values, dim=1, dtypes=C.FLOAT_DTYPES)
        if values.numel() != col.numel():
            raise ValueError(f"{op}: values has {values.numel()} entries but col_indices has {col.numel()}")


def _check_forward(input, crow, col, values, kernel_size, stride, padding, dilation, bias=None):
    op = "granet::sparse_conv2d"
    C.tensor(op, "input", input, dim=4, dtypes=C.FLOAT_DTYPES)
    _check_filters(op, crow, col, values)
    C.same_dtype(op, [("input", input), ("values", values)])
    if bias is not None:
        C.tensor(op, "bias", bias, dim=1)
        C.same_dtype(op, [("input", input), ("bias", bias)])
        C.size(op, "bias", bias, 0, crow.shape[0] - 1, "the output channels, len(crow_indices) - 1")
    C.same_device(op, [("input", input), ("crow_indices", crow), ("col_indices", col), ("values", values), ("bias", bias)])
    _check_geometry(op, input.shape[2:], kernel_size, stride, padding, dilation)


def _filter_bound(in_channels, kernel_size):
    return in_channels * kernel_size[0] * kernel_size[1]


def _check_forward_values(input, crow, col, values, kernel_size, stride, padding, dilation, bias=None):
    bound = _filter_bound(input.shape[1], kernel_size)
    C.compressed_index_values("granet::sparse_conv2d", "crow_indices", crow, "col_indices", col, bound)


def _forward_shape(input, crow, kernel_size, stride, padding, dilation):
    out = [output_size(input.shape[2 + i], kernel_size[i], stride[i], padding[i], dilation[i]) for i in range(2)]
    return [input.shape[0], crow.shape[0] - 1, *out]


sparse_conv2d_def = register_op(
    "sparse_conv2d",
    check=_check_forward,
    check_values=_check_forward_values,
    reference=reference.sparse_conv2d,
    fake_output=lambda input, crow, col, values, ks, st, pad, dil, bias=None: input.new_empty(
        _forward_shape(input, crow, ks, st, pad, dil)
    ),
    flops=lambda input, crow, col, values, ks, st, pad, dil, bias=None: 2
    * col.numel()
    * input.shape[0]
    * _forward_shape(input, crow, ks, st, pad, dil)[2]
    * _forward_shape(input, crow, ks, st, pad, dil)[3],
    kernels={"cpu": Kernel(lambda *a: torch.ops.granet._native_sparse_conv2d(*a), NATIVE_DTYPES)},
    cuda_order=("triton", "reference"),
)


def _check_grad_output(op, grad_output, input_shape, crow, kernel_size, stride, padding, dilation):
    C.tensor(op, "grad_output", grad_output, dim=4, dtypes=C.FLOAT_DTYPES)
    if len(input_shape) != 4 or any(int(s) < 0 for s in input_shape):
        raise ValueError(f"{op}: input_shape must be 4 sizes [N, C, H, W], got {list(input_shape)}")
    out_hw = _check_geometry(op, input_shape[2:], kernel_size, stride, padding, dilation)
    expected = [input_shape[0], crow.shape[0] - 1, *out_hw]
    if list(grad_output.shape) != expected:
        raise ValueError(f"{op}: grad_output must have shape {expected} for this input and filter bank, got {list(grad_output.shape)}")


def _check_dx(grad_output, crow, col, values, input_shape, kernel_size, stride, padding, dilation):
    op = "granet::sparse_conv2d_dx"
    _check_filters(op, crow, col, values)
    _check_grad_output(op, grad_output, input_shape, crow, kernel_size, stride, padding, dilation)
    C.same_dtype(op, [("grad_output", grad_output), ("values", values)])
    C.same_device(op, [("grad_output", grad_output), ("crow_indices", crow), ("col_indices", col), ("values", values)])


def _check_dx_values(grad_output, crow, col, values, input_shape, kernel_size, stride, padding, dilation):
    bound = _filter_bound(input_shape[1], kernel_size)
    C.compressed_index_values("granet::sparse_conv2d_dx", "crow_indices", crow, "col_indices", col, bound)


sparse_conv2d_dx_def = register_op(
    "sparse_conv2d_dx",
    check=_check_dx,
    check_values=_check_dx_values,
    reference=reference.sparse_conv2d_dx,
    fake_output=lambda g, crow, col, values, input_shape, ks, st, pad, dil: g.new_empty(list(input_shape)),
    flops=lambda g, crow, col, values, input_shape, ks, st, pad, dil: 2 * col.numel() * g.shape[0] * g.shape[2] * g.shape[3],
    kernels={"cpu": Kernel(lambda *a: torch.ops.granet._native_sparse_conv2d_dx(*a), NATIVE_DTYPES)},
    cuda_order=("triton", "reference"),
)


def _check_dw(grad_output, input, crow, col, kernel_size, stride, padding, dilation):
    op = "granet::sparse_conv2d_dw"
    _check_filters(op, crow, col, None)
    C.tensor(op, "input", input, dim=4, dtypes=C.FLOAT_DTYPES)
    _check_grad_output(op, grad_output, list(input.shape), crow, kernel_size, stride, padding, dilation)
    C.same_dtype(op, [("input", input), ("grad_output", grad_output)])
    C.same_device(op, [("input", input), ("grad_output", grad_output), ("crow_indices", crow), ("col_indices", col)])


def _check_dw_values(grad_output, input, crow, col, kernel_size, stride, padding, dilation):
    bound = _filter_bound(input.shape[1], kernel_size)
    C.compressed_index_values("granet::sparse_conv2d_dw", "crow_indices", crow, "col_indices", col, bound)


sparse_conv2d_dw_def = register_op(
    "sparse_conv2d_dw",
    check=_check_dw,
    check_values=_check_dw_values,
    reference=reference.sparse_conv2d_dw,
    fake_output=lambda g, input, crow, col, ks, st, pad, dil: input.new_empty(col.shape[0]),
    flops=lambda g, input, crow, col, ks, st, pad, dil: 2 * col.numel() * g.shape[0] * g.shape[2] * g.shape[3],
    kernels={"cpu": Kernel(lambda *a: torch.ops.granet._native_sparse_conv2d_dw(*a), NATIVE_DTYPES)},
    cuda_order=("triton", "reference"),
)


# --- sparse_conv2d_backward: both gradients from one pass over grad_output ------------------------

def _check_backward(grad_output, input, crow, col, values, kernel_size, stride, padding, dilation):
    op = "granet::sparse_conv2d_backward"
    _check_filters(op, crow, col, values)
    C.tensor(op, "input", input, dim=4, dtypes=C.FLOAT_DTYPES)
    _check_grad_output(op, grad_output, list(input.shape), crow, kernel_size, stride, padding, dilation)
    C.same_dtype(op, [("input", input), ("grad_output", grad_output), ("values", values)])
    C.same_device(
        op,
        [("input", input), ("grad_output", grad_output), ("crow_indices", crow), ("col_indices", col), ("values", values)],
    )


def _check_backward_values(grad_output, input, crow, col, values, kernel_size, stride, padding, dilation):
    bound = _filter_bound(input.shape[1], kernel_size)
    C.compressed_index_values("granet::sparse_conv2d_backward", "crow_indices", crow, "col_indices", col, bound)


def _reference_backward(grad_output, input, crow, col, values, kernel_size, stride, padding, dilation):
    grad_input = reference.sparse_conv2d_dx(
        grad_output, crow, col, values, list(input.shape), kernel_size, stride, padding, dilation
    )
    grad_values = reference.sparse_conv2d_dw(grad_output, input, crow, col, kernel_size, stride, padding, dilation)
    return grad_input, grad_values


sparse_conv2d_backward_def = register_op(
    "sparse_conv2d_backward",
    check=_check_backward,
    check_values=_check_backward_values,
    reference=_reference_backward,
    fake_output=lambda g, input, crow, col, values, ks, st, pad, dil: (input.new_empty(input.shape), input.new_empty(col.shape[0])),
    flops=lambda g, input, crow, col, values, ks, st, pad, dil: 4 * col.numel() * g.shape[0] * g.shape[2] * g.shape[3],
    kernels={"cpu": Kernel(lambda *a: torch.ops.granet._native_sparse_conv2d_backward(*a), NATIVE_DTYPES)},
    cuda_order=("triton", "reference"),
)


def _forward_backward(saved, grad, needs, hint=None):
    input, crow, col, values, kernel_size, stride, padding, dilation, bias = saved
    need_input, need_values = needs[0], needs[3]
    grad_input = grad_values = None
    if need_input and need_values:
        grad_input, grad_values = torch.ops.granet.sparse_conv2d_backward(
            grad, input, crow, col, values, kernel_size, stride, padding, dilation
        )
    elif need_input:
        grad_input = torch.ops.granet.sparse_conv2d_dx(
            grad, crow, col, values, list(input.shape), kernel_size, stride, padding, dilation
        )
    elif need_values:
        grad_values = torch.ops.granet.sparse_conv2d_dw(grad, input, crow, col, kernel_size, stride, padding, dilation)
    grad_bias = grad.sum((0, 2, 3)) if bias is not None and needs[8] else None
    return grad_input, None, None, grad_values, None, None, None, None, grad_bias


register_linear_autograd(sparse_conv2d_def, _forward_backward, needed_for={0: (3,), 3: (0,), 8: ()})
register_not_differentiable(sparse_conv2d_dx_def, "use sparse_conv2d, whose backward calls it")
register_not_differentiable(sparse_conv2d_dw_def, "use sparse_conv2d, whose backward calls it")
register_not_differentiable(sparse_conv2d_backward_def, "use sparse_conv2d, whose backward calls it")


def sparse_conv2d(input, crow_indices, col_indices, values, kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1), bias=None):
    """conv2d of input [N, C_in, H, W] with a CSR filter bank over [C_out, C_in*kh*kw]."""
    return call(
        sparse_conv2d_def, input, crow_indices, col_indices, values, list(kernel_size), list(stride), list(padding),
        list(dilation), bias,
    )


def sparse_conv2d_dx(grad_output, crow_indices, col_indices, values, input_shape, kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Gradient of sparse_conv2d with respect to its input."""
    return torch.ops.granet.sparse_conv2d_dx(
        grad_output, crow_indices, col_indices, values, list(input_shape), list(kernel_size), list(stride), list(padding), list(dilation)
    )


def sparse_conv2d_dw(grad_output, input, crow_indices, col_indices, kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Gradient of sparse_conv2d with respect to the filter values, at the nonzeros only -> [nnz]."""
    return torch.ops.granet.sparse_conv2d_dw(
        grad_output, input, crow_indices, col_indices, list(kernel_size), list(stride), list(padding), list(dilation)
    )


def sparse_conv2d_backward(grad_output, input, crow_indices, col_indices, values, kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Both gradients of sparse_conv2d from one pass: (grad_input [N, C_in, H, W], grad_values [nnz])."""
    return torch.ops.granet.sparse_conv2d_backward(
        grad_output, input, crow_indices, col_indices, values, list(kernel_size), list(stride), list(padding), list(dilation)
    )


# Polyphase planes (CPU): planes[n, (c*s + a)*s + b, i, j] = x[n, c, s*i + a - pad_h, s*j + b - pad_w],
# 0 outside x. A convolution at stride s is one at stride 1 over these planes (nn/conv.py rewrites
# strided SparseConv2d calls at small batches that way); merge is the adjoint, the planes' gradient.
torch.library.register_fake("granet::_native_polyphase_split")(
    lambda x, s, pad_h, pad_w, out_h, out_w: x.new_empty(x.shape[0], x.shape[1] * s * s, out_h, out_w))
torch.library.register_fake("granet::_native_polyphase_merge")(
    lambda planes, s, pad_h, pad_w, h, w: planes.new_empty(planes.shape[0], planes.shape[1] // (s * s), h, w))


class _PolyphasePlanes(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, stride, pad_h, pad_w, out_h, out_w):
        ctx.geometry = (stride, pad_h, pad_w, x.shape[2], x.shape[3])
        return torch.ops.granet._native_polyphase_split(x, stride, pad_h, pad_w, out_h, out_w)

    @staticmethod
    def backward(ctx, grad):
        stride, pad_h, pad_w, h, w = ctx.geometry
        return torch.ops.granet._native_polyphase_merge(grad, stride, pad_h, pad_w, h, w), None, None, None, None, None


def polyphase_planes(x, stride: int, pad_h: int, pad_w: int, out_h: int, out_w: int):
    """The s*s phase planes (out_h x out_w each) of x [N, C, H, W] zero-padded by pad_h / pad_w at the
    top / left, as [N, C*s*s, out_h, out_w] (pixel_unshuffle's channel order); differentiable."""
    C.tensor("granet::polyphase_planes", "x", x, dim=4, dtypes=NATIVE_DTYPES)
    return _PolyphasePlanes.apply(x, stride, pad_h, pad_w, out_h, out_w)
