"""Bad inputs to every op raise a Python exception (ValueError / TypeError / IndexError, never a
crash) whose message names the offending argument, through the Python wrappers and through
torch.ops.granet.* alike, under every backend that could run the call."""

from __future__ import annotations

import re

import pytest
import torch

import granet_kernels
from granet_kernels import ops as gops
from granet_kernels.ops import OPS, dense_to_csr, transpose_index
from granet_testing import backends_to_test, needs_cuda

I32 = torch.int32
BAD_INPUT = (ValueError, TypeError, IndexError)

# A fixed, valid pattern: W [M=4, K=6] with an empty row; N = 3.
N, M, K = 3, 4, 6
PATTERN = torch.tensor(
    [[1, 0, 0, 1, 0, 1],
     [0, 0, 0, 0, 0, 0],
     [0, 1, 1, 0, 0, 0],
     [1, 0, 0, 0, 1, 1]], dtype=torch.bool)
# Block pattern of a BSR W [4, 6] with 2 x 2 blocks: 2 block rows x 3 block columns.
BS = 2
BLOCKS = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)
# Conv: N=2, C_in=2, C_out=3, 5 x 5 input, 3 x 3 kernel, padding 1 -> 5 x 5 output.
CIN, COUT, HW, KS = 2, 3, 5, [3, 3]
GEOMETRY = (KS, [1, 1], [1, 1], [1, 1])


def _g(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def _csr(pattern):
    crow, col, _ = dense_to_csr(pattern)
    return crow, col


def _other_transpose():
    """The transposed index of another pattern of PATTERN's shape and nonzero count."""
    other = PATTERN.clone()
    other[0, 0], other[1, 0] = False, True
    crow, col = _csr(other)
    return transpose_index(crow, col, K)


def base(name):
    """Valid arguments (a list, to be edited) for op `name`."""
    crow, col = _csr(PATTERN)
    nnz = col.numel()
    if name == "csr_spmm":
        return [crow, col, _g(nnz), _g(N, K)]
    if name == "csr_spmm_t":
        return [*transpose_index(crow, col, K), _g(nnz), _g(N, M)]
    if name == "csr_sddmm":
        return [crow, col, _g(N, M), _g(N, K)]
    if name == "csr_linear":
        return [_g(N, K), crow, col, *transpose_index(crow, col, K), _g(nnz), _g(M)]
    if name == "csr_linear_backward":
        return [*transpose_index(crow, col, K), _g(nnz), _g(N, M), _g(N, K)]
    if name == "masked_matmul":
        return [_g(N, K), _g(M, K), PATTERN.clone(), _g(M)]
    bcrow, bcol = _csr(BLOCKS)
    if name == "bsr_spmm":
        return [bcrow, bcol, _g(bcol.numel(), BS, BS), _g(N, 3 * BS)]
    if name == "bsr_spmm_t":
        return [*transpose_index(bcrow, bcol, 3), _g(bcol.numel(), BS, BS), _g(N, 2 * BS)]
    if name == "bsr_sddmm":
        return [bcrow, bcol, _g(N, 2 * BS), _g(N, 3 * BS), BS]
    ccrow, ccol = _csr(torch.rand(COUT, CIN * KS[0] * KS[1], generator=torch.Generator().manual_seed(0)) < 0.4)
    if name == "sparse_conv2d":
        return [_g(2, CIN, HW, HW), ccrow, ccol, _g(ccol.numel()), *GEOMETRY, _g(COUT)]
    if name == "masked_conv2d":
        conv_mask = torch.rand(COUT, CIN, *KS, generator=torch.Generator().manual_seed(0)) < 0.4
        return [_g(2, CIN, HW, HW), _g(COUT, CIN, *KS), conv_mask, *GEOMETRY[1:], _g(COUT)]
    if name == "sparse_conv2d_dx":
        return [_g(2, COUT, HW, HW), ccrow, ccol, _g(ccol.numel()), [2, CIN, HW, HW], *GEOMETRY]
    if name == "sparse_conv2d_dw":
        return [_g(2, COUT, HW, HW), _g(2, CIN, HW, HW), ccrow, ccol, *GEOMETRY]
    if name == "sparse_conv2d_backward":
        return [_g(2, COUT, HW, HW), _g(2, CIN, HW, HW), ccrow, ccol, _g(ccol.numel()), *GEOMETRY]
    if name == "topk_threshold":
        return [[_g(7), _g(3, 5)], 4]
    if name == "regrow":
        return [PATTERN.clone(), _g(M, K), 3]
    raise KeyError(name)


def edit(**changes):
    """A mutation that replaces argument i (written a0, a1, ...) by f(old argument)."""
    def apply(args):
        args = list(args)
        for key, fn in changes.items():
            i = int(key[1:])
            args[i] = fn(args[i])
        return args
    return apply


def set_(i, j, value):
    """Copy of index tensor with entry j set to value."""
    def fn(t):
        t = t.clone()
        t[j] = value
        return t
    return fn


meta = lambda t: t.to("meta")  # noqa: E731  (a device mismatch where no second real device exists)
half = lambda t: t.half()  # noqa: E731
to_int = lambda t: t.to(torch.int32)  # noqa: E731
to_long = lambda t: t.long()  # noqa: E731
drop_last = lambda t: t[:-1]  # noqa: E731
add_dim = lambda t: t.unsqueeze(0)  # noqa: E731


def _compressed_index_cases(ptr, idx, bound_note):
    """The index errors every compressed (CSR/CSC/BSR) operand must report, for argument
    positions ptr/idx named by the op's schema."""
    p, i = f"a{ptr}", f"a{idx}"
    return [
        ("ptr-int64", edit(**{p: to_long}), TypeError, "{ptr}.*int32"),
        ("idx-int64", edit(**{i: to_long}), TypeError, "{idx}.*int32"),
        ("ptr-2d", edit(**{p: add_dim}), ValueError, "{ptr} must be 1-D"),
        ("ptr-empty", edit(**{p: lambda t: t[:0]}), ValueError, "{ptr} must have at least one entry"),
        ("ptr-not-from-0", edit(**{p: lambda t: t + 1}), ValueError, r"{ptr}\[0\] must be 0"),
        ("ptr-last-not-nnz", edit(**{p: set_(None, -1, 1)}), ValueError, r"{ptr}\[-1\] must equal"),
        ("ptr-decreasing", edit(**{p: _decreasing}), ValueError, "{ptr} must be non-decreasing"),
        ("idx-past-end", edit(**{i: set_(None, 0, bound_note)}), IndexError, "{idx} holds"),
        ("idx-negative", edit(**{i: set_(None, -1, -1)}), IndexError, "{idx} holds -1"),
    ]


def _decreasing(ptr):
    """Starts at 0 and ends at nnz, but goes down in between."""
    ptr = ptr.clone()
    ptr[1] = ptr[-1] + 1
    return ptr


# name -> (ptr position, idx position, past-the-end index value, argument names of ptr / idx)
COMPRESSED = {
    "csr_spmm": (0, 1, K, "crow_indices", "col_indices"),
    "csr_spmm_t": (0, 1, M, "ccol_indices", "row_indices"),
    "csr_sddmm": (0, 1, K, "crow_indices", "col_indices"),
    "csr_linear_backward": (0, 1, M, "ccol_indices", "row_indices"),
    "csr_linear": (1, 2, K, "crow_indices", "col_indices"),
    "bsr_spmm": (0, 1, 3, "crow_indices", "col_indices"),
    "bsr_spmm_t": (0, 1, 2, "ccol_indices", "row_indices"),
    "bsr_sddmm": (0, 1, 3, "crow_indices", "col_indices"),
    "sparse_conv2d": (1, 2, CIN * 9, "crow_indices", "col_indices"),
    "sparse_conv2d_dx": (1, 2, CIN * 9, "crow_indices", "col_indices"),
    "sparse_conv2d_dw": (2, 3, CIN * 9, "crow_indices", "col_indices"),
    "sparse_conv2d_backward": (2, 3, CIN * 9, "crow_indices", "col_indices"),
}

# (op, case id, mutation, exception, regex naming the argument)
CASES = [
    # csr_spmm(crow_indices, col_indices, values, x)
    ("csr_spmm", "x-3d", edit(a3=add_dim), ValueError, r"\bx must be 2-D"),
    ("csr_spmm", "x-too-few-features", edit(a3=lambda x: x[:, :4]), IndexError, r"col_indices holds 5, out of range \[0, 4\)"),
    ("csr_spmm", "values-length", edit(a2=drop_last), ValueError, r"\bvalues has \d+ entries"),
    ("csr_spmm", "values-2d", edit(a2=add_dim), ValueError, r"\bvalues must be 1-D"),
    ("csr_spmm", "values-int", edit(a2=to_int), TypeError, r"\bvalues must have dtype"),
    ("csr_spmm", "values-fp16-x-fp32", edit(a2=half), TypeError, r"\bvalues has dtype torch.float16"),
    ("csr_spmm", "x-int", edit(a3=to_int), TypeError, r"\bx must have dtype"),
    ("csr_spmm", "x-meta", edit(a3=meta), ValueError, r"\bx is on meta"),
    ("csr_spmm", "values-meta", edit(a2=meta), ValueError, r"\bvalues is on meta"),
    ("csr_spmm", "col-meta", edit(a1=meta), ValueError, r"\bcol_indices is on meta"),
    ("csr_spmm", "x-not-tensor", edit(a3=lambda x: x.tolist()), (TypeError, RuntimeError), r"\bx\b"),
    # csr_spmm_t(ccol_indices, row_indices, perm, values, dy)
    ("csr_spmm_t", "dy-3d", edit(a4=add_dim), ValueError, r"\bdy must be 2-D"),
    ("csr_spmm_t", "dy-too-few-columns", edit(a4=lambda t: t[:, :2]), IndexError, r"row_indices holds 3, out of range \[0, 2\)"),
    ("csr_spmm_t", "values-length", edit(a3=drop_last), ValueError, r"\bvalues has \d+ entries"),
    ("csr_spmm_t", "values-fp16", edit(a3=half), TypeError, r"\bvalues has dtype torch.float16"),
    ("csr_spmm_t", "perm-length", edit(a2=drop_last), ValueError, r"\bperm has \d+ entries"),
    ("csr_spmm_t", "perm-int64", edit(a2=to_long), TypeError, r"\bperm must have dtype int32"),
    ("csr_spmm_t", "perm-out-of-range", edit(a2=set_(None, 0, 99)), IndexError, r"\bperm holds 99"),
    ("csr_spmm_t", "perm-negative", edit(a2=set_(None, 0, -2)), IndexError, r"\bperm holds -2"),
    ("csr_spmm_t", "perm-meta", edit(a2=meta), ValueError, r"\bperm is on meta"),
    ("csr_spmm_t", "perm-not-a-permutation", edit(a2=lambda t: set_(None, 1, int(t[0]))(t)), ValueError,
     r"\bperm must be a permutation"),
    ("csr_spmm_t", "dy-meta", edit(a4=meta), ValueError, r"\bdy is on meta"),
    # csr_sddmm(crow_indices, col_indices, dy, x)
    ("csr_sddmm", "dy-wrong-rows", edit(a2=lambda t: t[:, :3]), ValueError, r"\bdy\.shape\[1\] must be 4"),
    ("csr_sddmm", "dy-wrong-batch", edit(a2=lambda t: t[:2]), ValueError, r"\bdy\.shape\[0\] must be 3"),
    ("csr_sddmm", "x-3d", edit(a3=add_dim), ValueError, r"\bx must be 2-D"),
    ("csr_sddmm", "x-too-few-features", edit(a3=lambda x: x[:, :5]), IndexError, r"col_indices holds 5"),
    ("csr_sddmm", "dy-fp16", edit(a2=half), TypeError, r"\bdy has dtype torch.float16"),
    ("csr_sddmm", "dy-int", edit(a2=to_int), TypeError, r"\bdy must have dtype"),
    ("csr_sddmm", "dy-meta", edit(a2=meta), ValueError, r"\bdy is on meta"),
    # csr_linear_backward(ccol_indices, row_indices, perm, values, dy, x)
    ("csr_linear_backward", "x-wrong-features", edit(a5=lambda x: x[:, :5]), ValueError, r"\bx\.shape\[1\] must be 6"),
    ("csr_linear_backward", "x-wrong-batch", edit(a5=lambda x: x[:2]), ValueError, r"\bx\.shape\[0\] must be 3"),
    ("csr_linear_backward", "x-3d", edit(a5=add_dim), ValueError, r"\bx must be 2-D"),
    ("csr_linear_backward", "dy-3d", edit(a4=add_dim), ValueError, r"\bdy must be 2-D"),
    ("csr_linear_backward", "dy-too-few-columns", edit(a4=lambda t: t[:, :2]), IndexError, r"row_indices holds 3, out of range \[0, 2\)"),
    ("csr_linear_backward", "values-length", edit(a3=drop_last), ValueError, r"\bvalues has \d+ entries"),
    ("csr_linear_backward", "perm-out-of-range", edit(a2=set_(None, 0, 99)), IndexError, r"\bperm holds 99"),
    ("csr_linear_backward", "perm-length", edit(a2=drop_last), ValueError, r"\bperm has \d+ entries"),
    ("csr_linear_backward", "perm-not-a-permutation", edit(a2=lambda t: set_(None, 1, int(t[0]))(t)), ValueError,
     r"\bperm must be a permutation"),
    ("csr_linear_backward", "x-fp64", edit(a5=lambda t: t.double()), TypeError, r"\bx has dtype torch.float64"),
    ("csr_linear_backward", "x-meta", edit(a5=meta), ValueError, r"\bx is on meta"),
    # csr_linear(x, crow_indices, col_indices, ccol_indices, row_indices, perm, values, bias)
    ("csr_linear", "x-wrong-features", edit(a0=lambda x: x[:, :5]), ValueError, r"\bx\.shape\[1\] must be 6"),
    ("csr_linear", "x-3d", edit(a0=add_dim), ValueError, r"\bx must be 2-D"),
    ("csr_linear", "x-int", edit(a0=to_int), TypeError, r"\bx must have dtype"),
    ("csr_linear", "values-length", edit(a6=drop_last), ValueError, r"\bvalues has \d+ entries"),
    ("csr_linear", "values-fp16", edit(a6=half), TypeError, r"\bvalues has dtype torch.float16"),
    ("csr_linear", "bias-wrong-length", edit(a7=drop_last), ValueError, r"\bbias\.shape\[0\] must be 4"),
    ("csr_linear", "bias-fp64", edit(a7=lambda t: t.double()), TypeError, r"\bbias has dtype torch.float64"),
    ("csr_linear", "perm-length", edit(a5=drop_last), ValueError, r"\bperm has \d+ entries"),
    ("csr_linear", "perm-int64", edit(a5=to_long), TypeError, r"\bperm must have dtype int32"),
    ("csr_linear", "perm-out-of-range", edit(a5=set_(None, 0, 99)), IndexError, r"\bperm holds 99"),
    ("csr_linear", "row-past-end", edit(a4=set_(None, 0, M)), IndexError, r"\brow_indices holds 4, out of range \[0, 4\)"),
    ("csr_linear", "ccol-not-from-0", edit(a3=lambda t: t + 1), ValueError, r"\bccol_indices\[0\] must be 0"),
    ("csr_linear", "ccol-int64", edit(a3=to_long), TypeError, r"\bccol_indices.*int32"),
    ("csr_linear", "perm-not-a-permutation", edit(a5=lambda t: set_(None, 1, int(t[0]))(t)), ValueError,
     r"\bperm must be a permutation"),
    ("csr_linear", "transposed-index-of-another-pattern",
     edit(a3=lambda t: _other_transpose()[0], a4=lambda t: _other_transpose()[1], a5=lambda t: _other_transpose()[2]),
     ValueError, r"ccol_indices, row_indices and perm are not the transposed index of crow_indices"),
    ("csr_linear", "x-meta", edit(a0=meta), ValueError, r"\bx is on meta"),
    ("csr_linear", "bias-meta", edit(a7=meta), ValueError, r"\bbias is on meta"),
    # masked_matmul(x, weight, mask, bias)
    ("masked_matmul", "x-wrong-features", edit(a0=lambda x: x[:, :5]), ValueError, r"weight\.shape\[1\] must be 5 \(the features of x\)"),
    ("masked_matmul", "x-3d", edit(a0=add_dim), ValueError, r"\bx must be 2-D"),
    ("masked_matmul", "weight-1d", edit(a1=lambda t: t[0]), ValueError, r"\bweight must be 2-D"),
    ("masked_matmul", "mask-wrong-shape", edit(a2=lambda t: t[:, :5].contiguous()), ValueError, r"\bmask must have weight's shape"),
    ("masked_matmul", "mask-not-bool", edit(a2=lambda t: t.float()), TypeError, r"\bmask must have dtype bool"),
    ("masked_matmul", "bias-wrong-length", edit(a3=drop_last), ValueError, r"\bbias\.shape\[0\] must be 4"),
    ("masked_matmul", "bias-2d", edit(a3=add_dim), ValueError, r"\bbias must be 1-D"),
    ("masked_matmul", "weight-fp16-x-fp32", edit(a1=half), TypeError, r"\bweight has dtype torch.float16"),
    ("masked_matmul", "bias-fp64", edit(a3=lambda t: t.double()), TypeError, r"\bbias has dtype torch.float64"),
    ("masked_matmul", "x-int", edit(a0=to_int), TypeError, r"\bx must have dtype"),
    ("masked_matmul", "mask-meta", edit(a2=meta), ValueError, r"\bmask is on meta"),
    ("masked_matmul", "bias-meta", edit(a3=meta), ValueError, r"\bbias is on meta"),
    # bsr_spmm(crow_indices, col_indices, values, x)
    ("bsr_spmm", "x-3d", edit(a3=add_dim), ValueError, r"\bx must be 2-D"),
    ("bsr_spmm", "x-not-multiple", edit(a3=lambda x: x[:, :5]), ValueError, r"\bx\.shape\[1\] = 5 must be a multiple of the block size 2"),
    ("bsr_spmm", "x-too-few-blocks", edit(a3=lambda x: x[:, :4]), IndexError, r"col_indices holds 2, out of range \[0, 2\)"),
    ("bsr_spmm", "values-not-square", edit(a2=lambda v: v[:, :1]), ValueError, r"\bvalues must hold square blocks"),
    ("bsr_spmm", "values-2d", edit(a2=lambda v: v[:, 0]), ValueError, r"\bvalues must be 3-D"),
    ("bsr_spmm", "values-block-count", edit(a2=drop_last), ValueError, r"\bvalues has \d+ blocks"),
    ("bsr_spmm", "values-fp16", edit(a2=half), TypeError, r"\bvalues has dtype torch.float16"),
    ("bsr_spmm", "values-int", edit(a2=to_int), TypeError, r"\bvalues must have dtype"),
    ("bsr_spmm", "values-meta", edit(a2=meta), ValueError, r"\bvalues is on meta"),
    # bsr_spmm_t(ccol_indices, row_indices, perm, values, dy)
    ("bsr_spmm_t", "dy-3d", edit(a4=add_dim), ValueError, r"\bdy must be 2-D"),
    ("bsr_spmm_t", "dy-not-multiple", edit(a4=lambda t: t[:, :3]), ValueError, r"\bdy\.shape\[1\] = 3 must be a multiple"),
    ("bsr_spmm_t", "perm-length", edit(a2=drop_last), ValueError, r"\bperm has \d+ entries"),
    ("bsr_spmm_t", "perm-out-of-range", edit(a2=set_(None, 0, 4)), IndexError, r"\bperm holds 4, out of range \[0, 4\)"),
    ("bsr_spmm_t", "perm-int64", edit(a2=to_long), TypeError, r"\bperm must have dtype int32"),
    ("bsr_spmm_t", "perm-not-a-permutation", edit(a2=lambda t: set_(None, 1, int(t[0]))(t)), ValueError,
     r"\bperm must be a permutation"),
    ("bsr_spmm_t", "values-block-count", edit(a3=drop_last), ValueError, r"\bvalues has \d+ blocks"),
    ("bsr_spmm_t", "values-fp16", edit(a3=half), TypeError, r"\bvalues has dtype torch.float16"),
    ("bsr_spmm_t", "dy-meta", edit(a4=meta), ValueError, r"\bdy is on meta"),
    # bsr_sddmm(crow_indices, col_indices, dy, x, blocksize)
    ("bsr_sddmm", "blocksize-0", edit(a4=lambda b: 0), ValueError, r"\bblocksize must be a positive integer"),
    ("bsr_sddmm", "blocksize-negative", edit(a4=lambda b: -2), ValueError, r"\bblocksize must be a positive integer"),
    ("bsr_sddmm", "dy-wrong-rows", edit(a2=lambda t: t[:, :2]), ValueError, r"\bdy\.shape\[1\] must be 4"),
    ("bsr_sddmm", "dy-wrong-batch", edit(a2=lambda t: t[:1]), ValueError, r"\bdy\.shape\[0\] must be 3"),
    ("bsr_sddmm", "x-not-multiple", edit(a3=lambda x: x[:, :5]), ValueError, r"\bx\.shape\[1\] = 5 must be a multiple"),
    ("bsr_sddmm", "x-3d", edit(a3=add_dim), ValueError, r"\bx must be 2-D"),
    ("bsr_sddmm", "dy-fp16", edit(a2=half), TypeError, r"\bdy has dtype torch.float16"),
    ("bsr_sddmm", "x-meta", edit(a3=meta), ValueError, r"\bdy is on cpu but x is on meta"),
    # sparse_conv2d(input, crow_indices, col_indices, values, kernel_size, stride, padding, dilation, bias)
    ("sparse_conv2d", "input-3d", edit(a0=lambda t: t[0]), ValueError, r"\binput must be 4-D"),
    ("sparse_conv2d", "input-int", edit(a0=to_int), TypeError, r"\binput must have dtype"),
    ("sparse_conv2d", "input-too-few-channels", edit(a0=lambda t: t[:, :1]), IndexError, r"col_indices holds \d+, out of range \[0, 9\)"),
    ("sparse_conv2d", "input-too-small", edit(a0=lambda t: t[:, :, :1, :1], a6=lambda p: [0, 0]), ValueError, r"\binput of spatial size \(1, 1\) is too small"),
    ("sparse_conv2d", "values-length", edit(a3=drop_last), ValueError, r"\bvalues has \d+ entries"),
    ("sparse_conv2d", "values-fp16", edit(a3=half), TypeError, r"\bvalues has dtype torch.float16"),
    ("sparse_conv2d", "bias-wrong-length", edit(a8=drop_last), ValueError, r"\bbias\.shape\[0\] must be 3"),
    ("sparse_conv2d", "bias-fp64", edit(a8=lambda t: t.double()), TypeError, r"\bbias has dtype torch.float64"),
    ("sparse_conv2d", "kernel-size-0", edit(a4=lambda k: [0, 3]), ValueError, r"\bkernel_size must be 2 integers >= 1"),
    ("sparse_conv2d", "kernel-size-3-ints", edit(a4=lambda k: [3, 3, 3]), ValueError, r"\bkernel_size must be 2 integers"),
    ("sparse_conv2d", "stride-0", edit(a5=lambda s: [1, 0]), ValueError, r"\bstride must be 2 integers >= 1"),
    ("sparse_conv2d", "padding-negative", edit(a6=lambda p: [-1, 0]), ValueError, r"\bpadding must be 2 integers >= 0"),
    ("sparse_conv2d", "dilation-0", edit(a7=lambda d: [0, 1]), ValueError, r"\bdilation must be 2 integers >= 1"),
    ("sparse_conv2d", "input-meta", edit(a0=meta), ValueError, r"\bcrow_indices is on cpu but input is on meta"),
    ("sparse_conv2d", "bias-meta", edit(a8=meta), ValueError, r"\bbias is on meta"),
    # masked_conv2d(input, weight, mask, stride, padding, dilation, bias)
    ("masked_conv2d", "input-3d", edit(a0=lambda t: t[0]), ValueError, r"\binput must be 4-D"),
    ("masked_conv2d", "input-int", edit(a0=to_int), TypeError, r"\binput must have dtype"),
    ("masked_conv2d", "input-wrong-channels", edit(a0=lambda t: t[:, :1]), ValueError, r"\bweight\.shape\[1\] must be 1 \(the channels of input\)"),
    ("masked_conv2d", "input-too-small", edit(a0=lambda t: t[:, :, :1, :1], a4=lambda p: [0, 0]), ValueError, r"\binput of spatial size \(1, 1\) is too small"),
    ("masked_conv2d", "weight-2d", edit(a1=lambda t: t[0, 0]), ValueError, r"\bweight must be 4-D"),
    ("masked_conv2d", "weight-fp64", edit(a1=lambda t: t.double()), TypeError, r"\bweight has dtype torch.float64"),
    ("masked_conv2d", "mask-wrong-shape", edit(a2=lambda t: t[:2].contiguous()), ValueError, r"\bmask must have weight's shape"),
    ("masked_conv2d", "mask-not-bool", edit(a2=lambda t: t.float()), TypeError, r"\bmask must have dtype bool"),
    ("masked_conv2d", "bias-wrong-length", edit(a6=drop_last), ValueError, r"\bbias\.shape\[0\] must be 3"),
    ("masked_conv2d", "stride-0", edit(a3=lambda s: [1, 0]), ValueError, r"\bstride must be 2 integers >= 1"),
    ("masked_conv2d", "padding-negative", edit(a4=lambda p: [-1, 0]), ValueError, r"\bpadding must be 2 integers >= 0"),
    ("masked_conv2d", "dilation-0", edit(a5=lambda d: [0, 1]), ValueError, r"\bdilation must be 2 integers >= 1"),
    ("masked_conv2d", "mask-meta", edit(a2=meta), ValueError, r"\bmask is on meta"),
    # sparse_conv2d_dx(grad_output, crow_indices, col_indices, values, input_shape, kernel_size, stride, padding, dilation)
    ("sparse_conv2d_dx", "grad-output-wrong-shape", edit(a0=lambda t: t[:, :, :4]), ValueError, r"\bgrad_output must have shape \[2, 3, 5, 5\]"),
    ("sparse_conv2d_dx", "grad-output-wrong-channels", edit(a0=lambda t: t[:, :2]), ValueError, r"\bgrad_output must have shape"),
    ("sparse_conv2d_dx", "grad-output-3d", edit(a0=lambda t: t[0]), ValueError, r"\bgrad_output must be 4-D"),
    ("sparse_conv2d_dx", "input-shape-3-sizes", edit(a4=lambda s: s[:3]), ValueError, r"\binput_shape must be 4 sizes"),
    ("sparse_conv2d_dx", "input-shape-negative", edit(a4=lambda s: [2, CIN, -5, HW]), ValueError, r"\binput_shape must be 4 sizes"),
    ("sparse_conv2d_dx", "values-length", edit(a3=drop_last), ValueError, r"\bvalues has \d+ entries"),
    ("sparse_conv2d_dx", "values-fp16", edit(a3=half), TypeError, r"\bvalues has dtype torch.float16"),
    ("sparse_conv2d_dx", "stride-0", edit(a6=lambda s: [0, 1]), ValueError, r"\bstride must be 2 integers >= 1"),
    ("sparse_conv2d_dx", "grad-output-meta", edit(a0=meta), ValueError, r"\bgrad_output is on meta"),
    # sparse_conv2d_dw(grad_output, input, crow_indices, col_indices, kernel_size, stride, padding, dilation)
    ("sparse_conv2d_dw", "grad-output-wrong-shape", edit(a0=lambda t: t[:, :, :, :4]), ValueError, r"\bgrad_output must have shape \[2, 3, 5, 5\]"),
    ("sparse_conv2d_dw", "grad-output-wrong-batch", edit(a0=lambda t: t[:1]), ValueError, r"\bgrad_output must have shape"),
    ("sparse_conv2d_dw", "input-3d", edit(a1=lambda t: t[0]), ValueError, r"\binput must be 4-D"),
    ("sparse_conv2d_dw", "input-fp64", edit(a1=lambda t: t.double()), TypeError, r"\bgrad_output has dtype torch.float32 but input has torch.float64"),
    ("sparse_conv2d_dw", "input-too-few-channels", edit(a1=lambda t: t[:, :1]), IndexError, r"col_indices holds \d+, out of range \[0, 9\)"),
    ("sparse_conv2d_dw", "padding-negative", edit(a6=lambda p: [0, -1]), ValueError, r"\bpadding must be 2 integers >= 0"),
    ("sparse_conv2d_dw", "input-meta", edit(a1=meta), ValueError, r"\bgrad_output is on cpu but input is on meta"),
    # sparse_conv2d_backward(grad_output, input, crow_indices, col_indices, values, kernel_size, stride, padding, dilation)
    ("sparse_conv2d_backward", "grad-output-wrong-shape", edit(a0=lambda t: t[:, :, :, :4]), ValueError, r"\bgrad_output must have shape \[2, 3, 5, 5\]"),
    ("sparse_conv2d_backward", "grad-output-3d", edit(a0=lambda t: t[0]), ValueError, r"\bgrad_output must be 4-D"),
    ("sparse_conv2d_backward", "input-3d", edit(a1=lambda t: t[0]), ValueError, r"\binput must be 4-D"),
    ("sparse_conv2d_backward", "input-too-few-channels", edit(a1=lambda t: t[:, :1]), IndexError, r"col_indices holds \d+, out of range \[0, 9\)"),
    ("sparse_conv2d_backward", "values-length", edit(a4=drop_last), ValueError, r"\bvalues has \d+ entries"),
    ("sparse_conv2d_backward", "values-fp16", edit(a4=half), TypeError, r"\bvalues has dtype torch.float16"),
    ("sparse_conv2d_backward", "input-fp64", edit(a1=lambda t: t.double()), TypeError, r"\bgrad_output has dtype torch.float32 but input has torch.float64"),
    ("sparse_conv2d_backward", "stride-0", edit(a6=lambda s: [0, 1]), ValueError, r"\bstride must be 2 integers >= 1"),
    ("sparse_conv2d_backward", "values-meta", edit(a4=meta), ValueError, r"\bvalues is on meta"),
    # topk_threshold(tensors, k); total = 22
    ("topk_threshold", "empty-list", edit(a0=lambda ts: []), ValueError, r"\btensors must be a non-empty list"),
    ("topk_threshold", "k-0", edit(a1=lambda k: 0), ValueError, r"\bk must be in \[1, 22\].*got 0"),
    ("topk_threshold", "k-total-plus-1", edit(a1=lambda k: 23), ValueError, r"\bk must be in \[1, 22\].*got 23"),
    ("topk_threshold", "k-negative", edit(a1=lambda k: -3), ValueError, r"\bk must be in \[1, 22\].*got -3"),
    ("topk_threshold", "mixed-dtypes", edit(a0=lambda ts: [ts[0], ts[1].double()]), TypeError, r"\btensors\[1\] has dtype torch.float64 but tensors\[0\]"),
    ("topk_threshold", "int-tensor", edit(a0=lambda ts: [ts[0].to(torch.int32), ts[1]]), TypeError, r"\btensors\[0\] must have dtype"),
    ("topk_threshold", "bool-tensor", edit(a0=lambda ts: [ts[0], ts[1] > 0]), TypeError, r"\btensors\[1\] must have dtype"),
    ("topk_threshold", "meta-tensor", edit(a0=lambda ts: [ts[0], meta(ts[1])]), ValueError, r"\btensors\[1\] is on meta"),
    # regrow(mask, score, k); PATTERN has 16 inactive positions of 24
    ("regrow", "k-over-inactive", edit(a2=lambda k: 17), ValueError, r"\bk = 17 exceeds the number of inactive \(False\) positions of mask \(16\)"),
    ("regrow", "k-over-numel", edit(a2=lambda k: 25), ValueError, r"\bk = 25 exceeds the number of positions in mask"),
    ("regrow", "k-negative", edit(a2=lambda k: -1), ValueError, r"\bk must be a non-negative integer"),
    ("regrow", "score-wrong-shape", edit(a1=lambda t: t[:, :5]), ValueError, r"\bscore must have mask's shape"),
    ("regrow", "score-flat", edit(a1=lambda t: t.reshape(-1)), ValueError, r"\bscore must have mask's shape"),
    ("regrow", "mask-not-bool", edit(a0=lambda t: t.to(torch.uint8)), TypeError, r"\bmask must have dtype bool"),
    ("regrow", "score-int", edit(a1=to_int), TypeError, r"\bscore must have dtype"),
    ("regrow", "score-meta", edit(a1=meta), ValueError, r"\bscore is on meta"),
]

for _name, (_p, _i, _bound, _pname, _iname) in COMPRESSED.items():
    for _cid, _mut, _exc, _pattern in _compressed_index_cases(_p, _i, _bound):
        CASES.append((_name, _cid, _mut, _exc, _pattern.format(ptr=re.escape(_pname), idx=re.escape(_iname))))


def _wrapper(name):
    return getattr(gops, name)


def _backends(name):
    # The checks run before any kernel, so even a backend whose kernels are still missing reports.
    return ["auto"] + backends_to_test(OPS[name], "cpu")


@pytest.mark.parametrize(
    "name,mutate,exc,pattern",
    [pytest.param(n, m, e, p, id=f"{n}-{cid}") for n, cid, m, e, p in CASES],
)
def test_bad_input_names_argument(name, mutate, exc, pattern):
    torch.manual_seed(0)
    good = base(name)
    OPS[name].op(*good)  # the unedited arguments are valid
    bad = mutate(good)
    for backend in _backends(name):
        for how, fn in (("torch.ops.granet", OPS[name].op), ("granet_kernels.ops", _wrapper(name))):
            with granet_kernels.backend(backend):
                with pytest.raises(exc, match=pattern) as info:
                    fn(*bad)
            assert isinstance(info.value, BAD_INPUT + (RuntimeError,)), f"{how} [{backend}]: {info.value!r}"
            assert not isinstance(info.value, NotImplementedError), f"{how} [{backend}]: {info.value!r}"


def test_every_op_has_error_cases():
    covered = {name for name, *_ in CASES}
    assert covered == set(OPS), f"ops without error cases: {sorted(set(OPS) - covered)}"


@needs_cuda
@pytest.mark.parametrize(
    "name,position,pattern",
    [
        ("csr_spmm", 3, r"\bcrow_indices is on cpu but x is on cuda"),
        ("csr_spmm", 2, r"\bvalues is on cuda"),
        ("csr_sddmm", 2, r"\bdy is on cuda"),
        ("masked_matmul", 2, r"\bmask is on cuda"),
        ("masked_matmul", 3, r"\bbias is on cuda"),
        ("bsr_spmm", 2, r"\bvalues is on cuda"),
        ("sparse_conv2d", 8, r"\bbias is on cuda"),
        ("sparse_conv2d_dw", 1, r"\binput is on cuda"),
        ("regrow", 1, r"\bscore is on cuda"),
    ],
)
def test_cpu_and_cuda_mixed(name, position, pattern):
    args = base(name)
    args[position] = args[position].cuda()
    for fn in (OPS[name].op, _wrapper(name)):
        with pytest.raises(ValueError, match=pattern):
            fn(*args)


@needs_cuda
def test_topk_threshold_cpu_and_cuda_mixed():
    tensors, k = base("topk_threshold")
    with pytest.raises(ValueError, match=r"\btensors\[1\] is on cuda"):
        gops.topk_threshold([tensors[0], tensors[1].cuda()], k)


# --- the native private op: its own checks, never a crash ----------------------------------------

def _native_args():
    crow, col = _csr(PATTERN)
    return [crow, col, _g(col.numel()), _g(N, K)]


@pytest.mark.parametrize(
    "mutate,exc,pattern",
    [
        pytest.param(edit(a1=set_(None, 2, K)), IndexError, r"col_indices\b.*\b6\b.*out of range", id="col-past-end"),
        pytest.param(edit(a1=set_(None, 0, 1 << 30)), IndexError, r"col_indices\b.*1073741824", id="col-huge"),
        pytest.param(edit(a1=set_(None, -1, -1)), IndexError, r"col_indices\b.*-1", id="col-negative"),
        pytest.param(edit(a0=lambda t: t + 1), ValueError, r"crow_indices\[0\] must be 0", id="crow-not-from-0"),
        pytest.param(edit(a0=set_(None, -1, 2)), ValueError, r"crow_indices\[-1\] must equal", id="crow-last"),
        pytest.param(edit(a0=_decreasing), ValueError, r"crow_indices must be non-decreasing", id="crow-decreasing"),
        pytest.param(edit(a0=to_long), ValueError, r"crow_indices\b.*int32", id="crow-int64"),
        pytest.param(edit(a1=to_long), ValueError, r"col_indices\b.*int32", id="col-int64"),
        pytest.param(edit(a2=drop_last), ValueError, r"\bvalues\b", id="values-length"),
        pytest.param(edit(a2=lambda v: v.double()), ValueError, r"\bvalues\b", id="values-dtype"),
        pytest.param(edit(a3=add_dim), ValueError, r"\bx must be 2-D", id="x-3d"),
        pytest.param(edit(a3=half, a2=half), ValueError, r"\bx\b.*float32", id="x-fp16"),
    ],
)
def test_native_csr_spmm_checks(mutate, exc, pattern):
    args = _native_args()
    torch.ops.granet._native_csr_spmm(*args)
    with pytest.raises(exc, match=pattern):
        torch.ops.granet._native_csr_spmm(*mutate(args))


# Every native kernel op takes the schema of the public op it backs: bad indices reach its own
# checks (called directly, bypassing the Python checks) and come back as exceptions.
# Native kernels behind public ops (the masked-layout helpers have their own test below).
NATIVE_OPS = sorted(
    name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
    if name.startswith("granet::_native_") and name[len("granet::_native_"):] in OPS
)


def test_native_masked_helpers_reject_bad_input():
    w = torch.randn(4, 5)
    with pytest.raises(ValueError, match="mask"):
        torch.ops.granet._native_masked_positions_are_zero(w, torch.ones(4, 5))
    with pytest.raises(ValueError, match="mask"):
        torch.ops.granet._native_masked_positions_are_zero(w, torch.ones(5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        torch.ops.granet._native_zero_masked_(w, torch.ones(3, 5, dtype=torch.bool))
    mask = torch.rand(4, 5) < 0.5
    assert not torch.ops.granet._native_masked_positions_are_zero(w, mask) or bool((w[~mask] == 0).all())
    g = torch.randn(4, 5)
    torch.ops.granet._native_zero_masked_(g, mask)
    assert bool((g[~mask] == 0).all())
    assert torch.ops.granet._native_masked_positions_are_zero(g, mask)
    assert torch.ops.granet._native_masked_positions_are_zero(g.t(), mask.t())


# Native ops without a compressed index: their own checks (k range, dtypes, contiguity).
_strided = lambda t: t.t().contiguous().t()  # noqa: E731  (same values, not contiguous)
NATIVE_SELECTION_CASES = {
    "_native_topk_threshold": [
        ("k-past-total", edit(a1=lambda k: 23), ValueError, "k"),
        ("k-0", edit(a1=lambda k: 0), ValueError, "k"),
        ("mixed-dtypes", edit(a0=lambda ts: [ts[0], ts[1].double()]), TypeError, "tensors"),
        ("int-tensor", edit(a0=lambda ts: [ts[0].to(torch.int32), ts[1]]), TypeError, "tensors"),
        ("strided", edit(a0=lambda ts: [ts[0], _strided(ts[1])]), ValueError, "tensors"),
    ],
    "_native_regrow": [
        ("k-over-inactive", edit(a2=lambda k: 17), ValueError, "k"),
        ("k-negative", edit(a2=lambda k: -1), ValueError, "k"),
        ("mask-uint8", edit(a0=lambda t: t.to(torch.uint8)), TypeError, "mask"),
        ("score-strided", edit(a1=_strided), ValueError, "score"),
        ("score-wrong-shape", edit(a1=lambda t: t[:, :5].contiguous()), ValueError, "score"),
    ],
}


def _native_cases():
    cases = []
    for native in NATIVE_OPS:
        public = native[len("_native_"):]
        for cid, mutate, exc, name in NATIVE_SELECTION_CASES.get(native, []):
            cases.append(pytest.param(native, public, mutate, exc, name, id=f"{native}-{cid}"))
        if public not in COMPRESSED:
            continue
        ptr, idx, bound, ptr_name, idx_name = COMPRESSED[public]
        cases += [
            pytest.param(native, public, edit(**{f"a{idx}": set_(None, 0, bound)}), IndexError, idx_name, id=f"{native}-idx-past-end"),
            pytest.param(native, public, edit(**{f"a{idx}": set_(None, -1, -1)}), IndexError, idx_name, id=f"{native}-idx-negative"),
            pytest.param(native, public, edit(**{f"a{ptr}": lambda t: t + 1}), ValueError, ptr_name, id=f"{native}-ptr-not-from-0"),
            pytest.param(native, public, edit(**{f"a{ptr}": _decreasing}), ValueError, ptr_name, id=f"{native}-ptr-decreasing"),
            pytest.param(native, public, edit(**{f"a{ptr}": to_long}), (ValueError, TypeError), ptr_name, id=f"{native}-ptr-int64"),
        ]
        if "perm" in OPS[public].reference.__code__.co_varnames[:OPS[public].reference.__code__.co_argcount]:
            cases += [
                pytest.param(native, public, edit(a2=set_(None, 0, 1 << 20)), IndexError, "perm", id=f"{native}-perm-past-end"),
                pytest.param(native, public, edit(a2=set_(None, 0, -1)), IndexError, "perm", id=f"{native}-perm-negative"),
            ]
    return cases


def test_native_ops_covered():
    assert "_native_csr_spmm" in NATIVE_OPS
    covered = {p.values[0] for p in _native_cases()}
    assert covered == set(NATIVE_OPS), f"native ops without error cases: {sorted(set(NATIVE_OPS) - covered)}"


@pytest.mark.parametrize("native,public,mutate,exc,name", _native_cases())
def test_native_op_rejects_bad_indices(native, public, mutate, exc, name):
    op = getattr(torch.ops.granet, native)
    good = base(public)
    op(*good)
    with pytest.raises(exc, match=rf"\b{re.escape(name)}\b"):
        op(*mutate(good))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_index_check_record_is_not_taken_for_another_pointer_tensor(backend):
    # A checked (crow, col) pair is remembered on col; a different crow tensor at the same address
    # with the same version number (a freed index's memory reused) must be checked afresh.
    crow, col = _csr(PATTERN)
    values, x = _g(col.numel()), _g(N, K)
    with granet_kernels.backend(backend):
        gops.csr_spmm(crow, col, values, x)
        bad = crow.data  # another tensor object over the same memory
        bad.copy_(crow.flip(0))  # decreasing
        while bad._version < crow._version:
            bad.add_(0)
        with pytest.raises(ValueError, match="crow_indices"):
            gops.csr_spmm(bad, col, values, x)


def test_inference_tensors_are_checked_on_every_call():
    with torch.inference_mode():
        crow, col = _csr(PATTERN)
        values, x = _g(col.numel()), _g(N, K)
        gops.csr_spmm(crow, col, values, x)
        col[0] = K + 3  # no version bump inside inference_mode
        with pytest.raises(IndexError, match="col_indices"):
            gops.csr_spmm(crow, col, values, x)
