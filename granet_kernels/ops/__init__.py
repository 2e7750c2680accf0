"""The op layer: torch.ops.granet.* with checks, references, fake impls, autograd, FLOP formulas
and backend dispatch. Importing this package registers everything."""

from granet_kernels.ops._index import dense_to_csr, transpose_index
from granet_kernels.ops._registry import OPS, Kernel, OpDef, select_backend
from granet_kernels.ops.bsr import bsr_sddmm, bsr_spmm, bsr_spmm_t
from granet_kernels.ops.conv import (polyphase_planes, sparse_conv2d, sparse_conv2d_backward, sparse_conv2d_dw,
                                     sparse_conv2d_dx)
from granet_kernels.ops.csr import csr_linear, csr_linear_backward, csr_sddmm, csr_spmm, csr_spmm_t
from granet_kernels.ops.masked import masked_conv2d, masked_matmul
from granet_kernels.ops.selection import regrow, topk_threshold

__all__ = [
    "OPS", "Kernel", "OpDef", "select_backend", "dense_to_csr", "transpose_index",
    "masked_matmul", "masked_conv2d", "csr_spmm", "csr_spmm_t", "csr_sddmm", "csr_linear", "csr_linear_backward", "bsr_spmm", "bsr_spmm_t", "bsr_sddmm",
    "sparse_conv2d", "sparse_conv2d_dx", "sparse_conv2d_dw", "sparse_conv2d_backward", "polyphase_planes",
    "topk_threshold", "regrow",
]
