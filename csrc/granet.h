// Shared declarations of the native kernels: one entry point per (op, device) pair.
// The public schemas live in ops.cpp; the Python layer (granet_kernels/ops) validates inputs
// first, and every entry point validates again before it indexes, for C++ callers.
#pragma once

#include <torch/types.h>

namespace granet {

// y[N, M] = x[N, K] @ W^T, W an M x K CSR matrix (int32 crow/col, values like x).
at::Tensor csr_spmm_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                        const at::Tensor& x);
#ifdef GRANET_WITH_CUDA
at::Tensor csr_spmm_cuda(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                         const at::Tensor& x);
#endif

// Checks shared by the CPU and CUDA entry points (shapes, dtypes, devices; not index values).
void check_csr_spmm_args(const char* op, const at::Tensor& crow, const at::Tensor& col,
                         const at::Tensor& values, const at::Tensor& x);
// Index-value checks on host copies of crow/col (monotone crow, crow[0]=0, crow[M]=nnz, 0<=col<K).
void check_csr_indices(const char* op, const at::Tensor& crow, const at::Tensor& col, int64_t n_cols);

}  // namespace granet
