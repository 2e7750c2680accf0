// Shared declarations of the native kernels: one entry point per (op, device) pair.
// The public schemas live in ops.cpp; the Python layer (granet_kernels/ops) validates inputs
// first, and every entry point validates again before it indexes, for C++ callers.
#pragma once

#include <torch/types.h>

#include <tuple>

namespace granet {

// --- CPU (csrc/cpu) ---
// y[N, M] = x[N, K] @ W^T, W an M x K CSR matrix (int32 crow/col, values like x).
at::Tensor csr_spmm_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, const at::Tensor& x);
// y = x @ W^T + bias with the bias added by the kernel (the CPU kernel of csr_linear).
at::Tensor csr_linear_cpu(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                          const std::optional<at::Tensor>& bias);
// The same, also returning x packed in batch panels (1-D), for the training step's backward.
std::tuple<at::Tensor, at::Tensor> csr_linear_panels_cpu(const at::Tensor& x, const at::Tensor& crow,
                                                         const at::Tensor& col, const at::Tensor& values,
                                                         const std::optional<at::Tensor>& bias);
// csr_linear_backward plus the bias gradient (dy summed over the batch while it is packed); x_panels,
// if given, is x as csr_linear_panels_cpu packed it (then x is not packed again). With the CSR index
// (crow, col) too, a batch that fits one panel runs the CSR-order backward (no gather or scatter).
std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_linear_backward_bias_cpu(
    const at::Tensor& ccol, const at::Tensor& row, const at::Tensor& perm, const at::Tensor& values,
    const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& x_panels,
    const std::optional<at::Tensor>& crow, const std::optional<at::Tensor>& col);
// dx[N, K] = dy[N, M] @ W through W's CSC index (ccol [K+1], row [nnz], perm [nnz] -> CSR position).
at::Tensor csr_spmm_t_cpu(const at::Tensor& ccol, const at::Tensor& row, const at::Tensor& perm,
                          const at::Tensor& values, const at::Tensor& dy);
// dvalues[q] = <dy[:, row(q)], x[:, col(q)]> in CSR order.
at::Tensor csr_sddmm_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& dy, const at::Tensor& x);
// Both backward products of y = x @ W^T in one CSC pass: (dx, dvalues in CSR order).
std::tuple<at::Tensor, at::Tensor> csr_linear_backward_cpu(const at::Tensor& ccol, const at::Tensor& row,
                                                           const at::Tensor& perm, const at::Tensor& values,
                                                           const at::Tensor& dy, const at::Tensor& x);
// BSR (square blocks bs x bs, values [nnzb, bs, bs]): y[N, rows*bs] = x[N, K] @ W^T.
at::Tensor bsr_spmm_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, const at::Tensor& x);
// dx[N, K] = dy[N, M] @ W through W's transposed block index (ccol [K/bs+1], row [nnzb], perm [nnzb]).
at::Tensor bsr_spmm_t_cpu(const at::Tensor& ccol, const at::Tensor& row, const at::Tensor& perm,
                          const at::Tensor& values, const at::Tensor& dy);
// out[p] = dy[:, block row(p)]^T @ x[:, block col(p)] -> [nnzb, bs, bs], in BSR order.
at::Tensor bsr_sddmm_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& dy, const at::Tensor& x,
                         int64_t blocksize);

// Sparse conv2d (csrc/cpu/conv.cpp): filter bank W [C_out, C_in, kh, kw] as CSR over
// [C_out, C_in*kh*kw] (int32 crow/col, values like the data); groups = 1.
// Forward: input [N, C_in, H, W] -> [N, C_out, H_out, W_out] (+ bias [C_out]).
at::Tensor sparse_conv2d_cpu(const at::Tensor& input, const at::Tensor& crow, const at::Tensor& col,
                             const at::Tensor& values, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, const c10::optional<at::Tensor>& bias);
// Input gradient: grad_output [N, C_out, H_out, W_out] -> [input_shape].
at::Tensor sparse_conv2d_dx_cpu(const at::Tensor& grad_output, const at::Tensor& crow, const at::Tensor& col,
                                const at::Tensor& values, at::IntArrayRef input_shape, at::IntArrayRef kernel_size,
                                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation);
// Weight gradient at the nonzeros, in CSR order -> [nnz].
at::Tensor sparse_conv2d_dw_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& crow,
                                const at::Tensor& col, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation);
// Both gradients from one pass over dY: (grad_input, grad_values).
std::tuple<at::Tensor, at::Tensor> sparse_conv2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                                              const at::Tensor& crow, const at::Tensor& col,
                                                              const at::Tensor& values, at::IntArrayRef kernel_size,
                                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                                              at::IntArrayRef dilation);

// True when weight is zero wherever mask is False (same-layout CPU tensors; else false).
bool masked_positions_are_zero_cpu(const at::Tensor& weight, const at::Tensor& mask);
// grad[~mask] = 0, in place.
void zero_masked_cpu(at::Tensor& grad, const at::Tensor& mask);
// a @ b (+ bias on every row) in an output of the CPU output pool (cpu/output_pool.h): the masked
// layout's GEMMs at large batches, whose outputs (a 64 MB dW at W 4096^2) would otherwise be fresh
// allocations that page-fault on every step.
at::Tensor pooled_mm_cpu(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias);
// Polyphase planes (csrc/cpu/polyphase.cpp): planes[n, (c*s + a)*s + b, i, j] = x[n, c, s*i + a - pad_h,
// s*j + b - pad_w] (0 outside x), out_h x out_w each; merge is its adjoint (the gradient of split).
at::Tensor polyphase_split_cpu(const at::Tensor& x, int64_t stride, int64_t pad_h, int64_t pad_w, int64_t out_h,
                               int64_t out_w);
at::Tensor polyphase_merge_cpu(const at::Tensor& planes, int64_t stride, int64_t pad_h, int64_t pad_w, int64_t h,
                               int64_t w);
// Small batches: y = x @ (weight * mask)^T + bias with the mask applied as the weight is read.
at::Tensor masked_linear_small_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                                   const std::optional<at::Tensor>& bias);
// Small batches: (dx = dy @ (weight * mask), dW = (dy^T @ x) * mask) in one pass over the weight;
// an output not asked for is empty (weight may be absent without dx).
std::tuple<at::Tensor, at::Tensor> masked_backward_small_cpu(const at::Tensor& dy, const at::Tensor& x,
                                                             const std::optional<at::Tensor>& weight,
                                                             const at::Tensor& mask, bool need_dx, bool need_dw);

// Selection (csrc/cpu/selection.cpp); contiguous float16/bfloat16/float32/float64 CPU tensors.
// The k-th largest |value| over all tensors of the list, as a 0-d tensor of their dtype (NaN counts
// as the largest magnitude; -0 and +0 are equal).
at::Tensor topk_threshold_cpu(at::TensorList tensors, int64_t k);
// Flat int64 indices, ascending, of the k largest |score| where mask is false; ties to the lower index.
at::Tensor regrow_cpu(const at::Tensor& mask, const at::Tensor& score, int64_t k);

#ifdef GRANET_WITH_CUDA
// --- CUDA (csrc/cuda) ---
at::Tensor csr_spmm_cuda(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, const at::Tensor& x);
#endif

// --- checks (csrc/checks.cpp); messages name the op and the argument ---
// 2-D float32/float64 dense operand.
void check_dense(const char* op, const char* name, const at::Tensor& t);
// 1-D int32 compressed index pair; with check_values, also ptr[0] = 0, non-decreasing,
// ptr[-1] = len(idx), 0 <= idx < bound (reads host copies).
void check_compressed_index(const char* op, const char* ptr_name, const at::Tensor& ptr, const char* idx_name,
                            const at::Tensor& idx, int64_t bound);
// 0 <= idx < bound for a 1-D int32 tensor.
void check_index_range(const char* op, const char* name, const at::Tensor& idx, int64_t bound);
void check_same_device(const char* op, const at::Tensor& ref, std::initializer_list<const at::Tensor*> others);
// The CSR SpMM arguments without the O(nnz) pass over the index values (callers with a faster one).
void check_csr_spmm_meta(const char* op, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                         const at::Tensor& x);
// The CSR SpMM arguments (shapes, dtypes, devices and index values).
void check_csr_spmm_args(const char* op, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                         const at::Tensor& x);

}  // namespace granet
