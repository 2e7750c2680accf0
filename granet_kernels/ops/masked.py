"""Masked-dense products: y = x @ (weight * mask)^T + bias and conv2d(input, weight * mask) + bias,
without materialising weight * mask when the weight is already zero outside the mask."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils.flop_counter import register_flop_formula

from granet_kernels.ops import _checks as C
from granet_kernels.ops import reference
from granet_kernels.ops._autograd import BACKWARD_HINT, call, register_linear_autograd
from granet_kernels.ops._registry import Kernel, nnz_of_mask, register_op

OP = "granet::masked_matmul"


def _check_masked_operands(op, data_name, data, weight, mask, bias, dim, data_size, bias_size):
    """The checks both masked products share: `data` [N, K, ...] against weight / mask [M, K, ...]
    (mask bool, of weight's shape) and bias [M]."""
    C.tensor(op, data_name, data, dim=dim, dtypes=C.FLOAT_DTYPES)
    C.tensor(op, "weight", weight, dim=dim, dtypes=C.FLOAT_DTYPES)
    C.tensor(op, "mask", mask, dim=dim, dtypes=(torch.bool,))
    C.same_dtype(op, [(data_name, data), ("weight", weight)])
    C.size(op, "weight", weight, 1, data.shape[1], data_size)
    if mask.shape != weight.shape:
        raise ValueError(f"{op}: mask must have weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
    if bias is not None:
        C.tensor(op, "bias", bias, dim=1)
        C.same_dtype(op, [(data_name, data), ("bias", bias)])
        C.size(op, "bias", bias, 0, weight.shape[0], bias_size)
    C.same_device(op, [(data_name, data), ("weight", weight), ("mask", mask), ("bias", bias)])


def _check(x, weight, mask, bias=None):
    _check_masked_operands(OP, "x", x, weight, mask, bias, 2, "the features of x", "the rows of weight")


# Small batches take one-pass kernels that apply the mask as they read the weight
# (`_native_masked_linear_small` / `_native_masked_backward_small`): no check of the weight against
# the mask (a pass over both), no dW zeroing pass, no fresh dW allocation. Above, the GEMMs are
# compute-bound and BLAS wins. Measured (1 thread, Zen 3, d = 0.5, ms; kernel vs check + BLAS for
# the forward, vs BLAS dx + BLAS dW + zeroing for the backward): W 4096^2 batch 8 forward 2.4-2.5x,
# backward 3.6-4.1x; 16: 1.6-2.1x / 2.1x; 32: 1.1-1.4x / 1.2-1.4x; 64: 0.7-0.9x / 0.8-0.9x.
# W 1024^2 (in the last-level cache) batch 8: 1.3-1.6x / 1.3-1.7x; 16: 1.0-1.1x / 0.7-1.2x.
# Batch 1 forward: 0.8x of BLAS alone at 4096^2 (reading the bool mask is 25% more memory traffic),
# against 0.4x for check + BLAS.
# The large-batch route writes its GEMMs into pooled outputs (no page faults on a fresh dW), which
# moved the backward's crossover down: W 4096^2, d = 0.6, batch 32, ms: forward kernel 28.5 vs check
# + BLAS 40.9, backward kernel ~93 vs check + BLAS ~60 (equal at batch 24). So the backward has its
# own, lower limit.
SMALL_BATCH_MAX = 8
SMALL_BATCH_MAX_LARGE_WEIGHT = 32
SMALL_BATCH_BACKWARD_MAX_LARGE_WEIGHT = 24
LARGE_WEIGHT_NUMEL = 1 << 22


def _small_batch(x, weight, mask):
    """Whether x @ (weight * mask)^T takes the one-pass small-batch kernels."""
    limit = SMALL_BATCH_MAX_LARGE_WEIGHT if weight.numel() > LARGE_WEIGHT_NUMEL else SMALL_BATCH_MAX
    return (x.shape[0] <= limit and x.dtype in (torch.float32, torch.float64) and weight.is_contiguous()
            and mask.is_contiguous())


def _small_batch_backward(grad, weight):
    """Whether a forward that took the small-batch kernel also takes its backward kernel."""
    limit = SMALL_BATCH_BACKWARD_MAX_LARGE_WEIGHT if weight.numel() > LARGE_WEIGHT_NUMEL else SMALL_BATCH_MAX
    return grad.shape[0] <= limit


def _cpu(x, weight, mask, bias=None):
    if _small_batch(x, weight, mask):
        y = torch.ops.granet._native_masked_linear_small(x, weight, mask, bias)
        setattr(y, BACKWARD_HINT, "small_batch")
        return y
    # The masked layout keeps its weight zero outside the mask; then this is one dense GEMM with
    # no masked copy of the weight. The check reads the weight once and allocates nothing; its
    # result rides on the output to the backward (the saved weight cannot change in between).
    # The GEMMs write into pooled outputs (`_native_pooled_mm`, also in the backward).
    if torch.ops.granet._native_masked_positions_are_zero(weight, mask):
        y = torch.ops.granet._native_pooled_mm(x, weight.t(), bias)
        setattr(y, BACKWARD_HINT, "weight_is_masked")
        return y
    return torch.ops.granet._native_pooled_mm(x, torch.where(mask, weight, 0).t(), bias)


def _triton(x, weight, mask, bias=None):
    from granet_kernels.triton import masked_matmul as kernels

    return kernels.masked_matmul(x, weight, mask, bias)


masked_matmul_def = register_op(
    "masked_matmul",
    check=_check,
    reference=reference.masked_matmul,
    fake_output=lambda x, weight, mask, bias=None: x.new_empty(x.shape[0], weight.shape[0]),
    flops=lambda x, weight, mask, bias=None: 2 * x.shape[0] * nnz_of_mask(mask),
    kernels={
        # On the CPU the masked-dense layout is used above the density where sparse kernels stop
        # winning, so dense BLAS on the masked weight is the fast path there.
        "cpu": Kernel(_cpu),
        # Triton's dot has no fp64 path on the GPU (and the interpreter mishandles it).
        "triton": Kernel(_triton, (torch.float16, torch.bfloat16, torch.float32)),
    },
    cuda_order=("triton", "reference"),
)


def _weight_grad(grad, x, mask):
    if grad.device.type == "cpu":
        # A pooled output: a fresh dW (64 MB at W 4096^2) page-faults on every step, which cost the
        # BLAS product ~40% more time (1 thread, Zen 3: 125 -> 195-230 ms at batch 256).
        grad_weight = torch.ops.granet._native_pooled_mm(grad.t(), x)
        torch.ops.granet._native_zero_masked_(grad_weight, mask)
        return grad_weight
    return (grad.t() @ x) * mask


torch.library.impl("granet::_masked_weight_grad", ["cpu", "cuda"])(_weight_grad)
torch.library.register_fake("granet::_masked_weight_grad")(lambda grad, x, mask: grad.new_empty(mask.shape))
register_flop_formula(torch.ops.granet._masked_weight_grad, get_raw=True)(
    lambda grad, x, mask, *args, out_val=None, **kwargs: 2 * grad.shape[0] * nnz_of_mask(mask)
)


def _backward(saved, grad, needs, hint=None):
    x, weight, mask, bias = saved
    # Where a dispatch mode watches (FlopCounterMode, tracing), both products go through granet ops,
    # so that they are counted as sparse products (2 * N * nnz) like the forward; plain eager calls
    # BLAS directly (the same arithmetic, without the op dispatch).
    watched = _get_current_dispatch_mode() is not None
    if hint == "small_batch" and not watched and (needs[0] or needs[1]) and _small_batch_backward(grad, weight):
        dx, dw = torch.ops.granet._native_masked_backward_small(grad, x, weight if needs[0] else None, mask,
                                                               bool(needs[0]), bool(needs[1]))
        grad_bias = grad.sum(0) if bias is not None else None
        return (dx if needs[0] else None), (dw if needs[1] else None), None, grad_bias
    grad_x = None
    if needs[0]:
        if hint == "weight_is_masked" and not watched:
            grad_x = torch.ops.granet._native_pooled_mm(grad, weight)
        else:
            # dx = dy @ (w * m) is itself a masked matmul, over the transposed weight and mask.
            grad_x = torch.ops.granet.masked_matmul(grad, weight.t(), mask.t(), None)
    grad_weight = None
    if needs[1]:
        grad_weight = torch.ops.granet._masked_weight_grad(grad, x, mask) if watched else _weight_grad(grad, x, mask)
    grad_bias = grad.sum(0) if bias is not None else None
    return grad_x, grad_weight, None, grad_bias


register_linear_autograd(masked_matmul_def, _backward, needed_for={0: (1,), 1: (0,), 3: ()})


def masked_matmul(x, weight, mask, bias=None):
    """y = x @ (weight * mask)^T + bias; x [N, K], weight/mask [M, K] (mask bool) -> [N, M]."""
    return call(masked_matmul_def, x, weight, mask, bias)


# --- masked_conv2d --------------------------------------------------------------------------------

CONV_OP = "granet::masked_conv2d"


def _check_conv(input, weight, mask, stride, padding, dilation, bias=None):
    from granet_kernels.ops.conv import _check_geometry

    _check_masked_operands(CONV_OP, "input", input, weight, mask, bias, 4, "the channels of input",
                           "the output channels of weight")
    _check_geometry(CONV_OP, input.shape[2:], weight.shape[2:], stride, padding, dilation)


def _conv_output_shape(input, weight, stride, padding, dilation):
    from granet_kernels.ops.conv import output_size

    hw = [output_size(input.shape[2 + i], weight.shape[2 + i], stride[i], padding[i], dilation[i]) for i in range(2)]
    return [input.shape[0], weight.shape[0], *hw]


def _conv_flops(input, weight, mask, stride, padding, dilation, *rest):
    out = _conv_output_shape(input, weight, stride, padding, dilation)
    return 2 * nnz_of_mask(mask) * out[0] * out[2] * out[3]


def _conv_cpu(input, weight, mask, stride, padding, dilation, bias=None):
    # As _cpu above: a weight kept zero outside the mask is used as it is (no masked copy).
    if torch.ops.granet._native_masked_positions_are_zero(weight, mask):
        y = torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation)
        setattr(y, BACKWARD_HINT, "weight_is_masked")
        return y
    return torch.nn.functional.conv2d(input, torch.where(mask, weight, 0), bias, stride, padding, dilation)


masked_conv2d_def = register_op(
    "masked_conv2d",
    check=_check_conv,
    reference=reference.masked_conv2d,
    fake_output=lambda input, weight, mask, stride, padding, dilation, bias=None: input.new_empty(
        _conv_output_shape(input, weight, stride, padding, dilation)
    ),
    flops=_conv_flops,
    kernels={"cpu": Kernel(_conv_cpu)},
    cuda_order=("reference",),
)


def _conv_backward_impl(grad, input, weight, mask, stride, padding, dilation, weight_is_masked, need_input,
                        need_weight):
    w = weight if weight_is_masked else torch.where(mask, weight, 0)
    dx, dw, _ = torch.ops.aten.convolution_backward(grad, input, w, None, stride, padding, dilation, False, [0, 0], 1,
                                                    [need_input, need_weight, False])
    if need_weight:
        if dw.device.type == "cpu" and dw.is_contiguous() and mask.is_contiguous():
            torch.ops.granet._native_zero_masked_(dw, mask)
        else:
            dw = dw * mask
    empty = grad.new_empty(0)
    return (dx if need_input else empty), (dw if need_weight else empty)


torch.library.impl("granet::_masked_conv2d_backward", ["cpu", "cuda"])(_conv_backward_impl)
torch.library.register_fake("granet::_masked_conv2d_backward")(
    lambda grad, input, weight, mask, stride, padding, dilation, weight_is_masked, need_input, need_weight: (
        input.new_empty(input.shape if need_input else (0,)), weight.new_empty(weight.shape if need_weight else (0,))
    )
)
register_flop_formula(torch.ops.granet._masked_conv2d_backward, get_raw=True)(
    lambda grad, input, weight, mask, stride, padding, dilation, weight_is_masked, need_input, need_weight, *args,
    out_val=None, **kwargs: (int(need_input) + int(need_weight)) * 2 * nnz_of_mask(mask) * grad.shape[0]
    * grad.shape[2] * grad.shape[3]
)


def _conv_backward(saved, grad, needs, hint=None):
    input, weight, mask, stride, padding, dilation, bias = saved
    need_input, need_weight = bool(needs[0]), bool(needs[1])
    grad_input = grad_weight = None
    if need_input or need_weight:
        dx, dw = torch.ops.granet._masked_conv2d_backward(grad, input, weight, mask, stride, padding, dilation,
                                                          hint == "weight_is_masked", need_input, need_weight)
        grad_input = dx if need_input else None
        grad_weight = dw if need_weight else None
    grad_bias = grad.sum((0, 2, 3)) if bias is not None else None
    return grad_input, grad_weight, None, None, None, None, grad_bias


register_linear_autograd(masked_conv2d_def, _conv_backward, needed_for={0: (1,), 1: (0,), 6: ()})


def masked_conv2d(input, weight, mask, stride, padding, dilation, bias=None):
    """conv2d(input, weight * mask) + bias (groups 1); weight/mask [C_out, C_in, kh, kw] (mask bool).
    Differentiable in input, weight (zero gradient outside the mask) and bias."""
    return call(masked_conv2d_def, input, weight, mask, list(stride), list(padding), list(dilation), bias)
