// The one schema block of the granet op library, and the registration of the native kernels.
//
// Public ops (torch.ops.granet.<name>) get their CPU/CUDA kernels from the Python layer
// (granet_kernels/ops), which validates inputs and picks a backend (reference, cpu, triton, cuda).
// Native kernels are registered here under private "_native_*" ops, one schema each, with a CPU
// kernel and, when built with CUDA, a CUDA kernel.

#include <torch/library.h>

#include "granet.h"

TORCH_LIBRARY(granet, m) {
  // y = x @ (weight * mask)^T + bias; x [N, K], weight/mask [M, K], bias [M] -> [N, M]
  m.def("masked_matmul(Tensor x, Tensor weight, Tensor mask, Tensor? bias=None) -> Tensor");
  m.def("masked_conv2d(Tensor input, Tensor weight, Tensor mask, int[2] stride, int[2] padding, int[2] dilation, "
        "Tensor? bias=None) -> Tensor");
  // W is M x K in CSR (int32 crow_indices [M+1], col_indices [nnz]); x [N, K] -> x @ W^T [N, M]
  m.def("csr_spmm(Tensor crow_indices, Tensor col_indices, Tensor values, Tensor x) -> Tensor");
  // dy [N, M] -> dy @ W [N, K]; W given by its transposed (CSC) index: ccol_indices [K+1],
  // row_indices [nnz], perm [nnz] (CSR position of each CSC slot), values in CSR order.
  m.def("csr_spmm_t(Tensor ccol_indices, Tensor row_indices, Tensor perm, Tensor values, Tensor dy) -> Tensor");
  // out[p] = sum_n dy[n, row(p)] * x[n, col(p)] for every nonzero p of the CSR pattern -> [nnz]
  m.def("csr_sddmm(Tensor crow_indices, Tensor col_indices, Tensor dy, Tensor x) -> Tensor");
  // Block-sparse W (blocks bs x bs): values [nnzb, bs, bs]; x [N, K] -> [N, M], M = rows*bs
  m.def("bsr_spmm(Tensor crow_indices, Tensor col_indices, Tensor values, Tensor x) -> Tensor");
  m.def("bsr_spmm_t(Tensor ccol_indices, Tensor row_indices, Tensor perm, Tensor values, Tensor dy) -> Tensor");
  m.def("bsr_sddmm(Tensor crow_indices, Tensor col_indices, Tensor dy, Tensor x, int blocksize) -> Tensor");
  // Sparse filter bank: CSR over [C_out, C_in*kh*kw] (torch's weight flattening order).
  m.def("sparse_conv2d(Tensor input, Tensor crow_indices, Tensor col_indices, Tensor values, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, Tensor? bias=None) -> Tensor");
  m.def("sparse_conv2d_dx(Tensor grad_output, Tensor crow_indices, Tensor col_indices, Tensor values, "
        "int[4] input_shape, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def("sparse_conv2d_dw(Tensor grad_output, Tensor input, Tensor crow_indices, Tensor col_indices, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  // The k-th largest |value| over all tensors of the list (0-d tensor), without concatenating.
  m.def("topk_threshold(Tensor[] tensors, int k) -> Tensor");
  // Flat indices (int64, ascending) of the k largest |score| among positions where mask is False;
  // ties broken by the lower index.
  m.def("regrow(Tensor mask, Tensor score, int k) -> Tensor");

  // y = x @ W^T + bias with W's CSR index and its transposed index (built once per mask change),
  // so that the backward needs no index work. Differentiable in x, values and bias.
  m.def("csr_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor ccol_indices, Tensor row_indices, "
        "Tensor perm, Tensor values, Tensor? bias=None) -> Tensor");
  // Both backward products of y = x @ W^T (W in CSR, given here by its CSC index) in one pass:
  // (dx = dy @ W [N, K], dvalues = (dy^T x) at the nonzeros, in CSR order [nnz]).
  m.def("csr_linear_backward(Tensor ccol_indices, Tensor row_indices, Tensor perm, Tensor values, Tensor dy, "
        "Tensor x) -> (Tensor, Tensor)");

  // Both gradients of sparse_conv2d from one pass over grad_output: (grad_input, grad_values [nnz]).
  m.def("sparse_conv2d_backward(Tensor grad_output, Tensor input, Tensor crow_indices, Tensor col_indices, "
        "Tensor values, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> (Tensor, Tensor)");

  // Native kernels behind the public ops (same schemas, one per kernel family).
  m.def("_native_masked_positions_are_zero(Tensor weight, Tensor mask) -> bool");
  m.def("_native_zero_masked_(Tensor(a!) grad, Tensor mask) -> ()");
  // a @ b (+ bias) into a pooled output (no page faults for large outputs): the masked layout's GEMMs.
  m.def("_native_pooled_mm(Tensor a, Tensor b, Tensor? bias=None) -> Tensor");
  // Polyphase planes of an input and their adjoint: strided convolutions as stride-1 ones (nn/conv.py).
  m.def("_native_polyphase_split(Tensor x, int stride, int pad_h, int pad_w, int out_h, int out_w) -> Tensor");
  m.def("_native_polyphase_merge(Tensor planes, int stride, int pad_h, int pad_w, int h, int w) -> Tensor");
  // Small batches of the masked layout: the mask applied as the weight is read (one pass over it).
  m.def("_native_masked_linear_small(Tensor x, Tensor weight, Tensor mask, Tensor? bias=None) -> Tensor");
  m.def("_native_masked_backward_small(Tensor dy, Tensor x, Tensor? weight, Tensor mask, bool need_dx, "
        "bool need_dw) -> (Tensor, Tensor)");
  // The masked layout's weight gradient, (grad^T @ x) zeroed outside the mask: the backward calls it
  // where a dispatch mode watches (FlopCounterMode, tracing), so it is counted as 2 * N * nnz.
  m.def("_masked_weight_grad(Tensor grad, Tensor x, Tensor mask) -> Tensor");
  // masked_conv2d's (dx, dW) (dW zeroed outside the mask; an output not asked for is empty).
  m.def("_masked_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor mask, int[2] stride, "
        "int[2] padding, int[2] dilation, bool weight_is_masked, bool need_input, bool need_weight) -> (Tensor, Tensor)");
  m.def("_native_csr_spmm(Tensor crow_indices, Tensor col_indices, Tensor values, Tensor x) -> Tensor");
  m.def("_native_csr_spmm_t(Tensor ccol_indices, Tensor row_indices, Tensor perm, Tensor values, Tensor dy) -> Tensor");
  m.def("_native_csr_sddmm(Tensor crow_indices, Tensor col_indices, Tensor dy, Tensor x) -> Tensor");
  m.def("_native_csr_linear_backward(Tensor ccol_indices, Tensor row_indices, Tensor perm, Tensor values, "
        "Tensor dy, Tensor x) -> (Tensor, Tensor)");
  // CPU kernels of csr_linear's forward and backward with the bias fused (added as y is stored;
  // summed as dy is packed): (x, crow, col, values, bias) and (dx, dvalues, dbias).
  m.def("_native_csr_linear_bias(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, "
        "Tensor? bias=None) -> Tensor");
  // With crow_indices / col_indices given, small batches take the CSR-order backward (csr_impl.h).
  m.def("_native_csr_linear_backward_bias(Tensor ccol_indices, Tensor row_indices, Tensor perm, Tensor values, "
        "Tensor dy, Tensor x, Tensor? x_panels=None, Tensor? crow_indices=None, Tensor? col_indices=None) "
        "-> (Tensor, Tensor, Tensor)");
  // The forward kernel that also returns x as packed (training: the backward reuses it as x_panels).
  m.def("_native_csr_linear_bias_panels(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, "
        "Tensor? bias=None) -> (Tensor, Tensor)");
  m.def("_native_bsr_spmm(Tensor crow_indices, Tensor col_indices, Tensor values, Tensor x) -> Tensor");
  m.def("_native_bsr_spmm_t(Tensor ccol_indices, Tensor row_indices, Tensor perm, Tensor values, Tensor dy) -> Tensor");
  m.def("_native_bsr_sddmm(Tensor crow_indices, Tensor col_indices, Tensor dy, Tensor x, int blocksize) -> Tensor");
  m.def("_native_sparse_conv2d(Tensor input, Tensor crow_indices, Tensor col_indices, Tensor values, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, Tensor? bias=None) -> Tensor");
  m.def("_native_sparse_conv2d_dx(Tensor grad_output, Tensor crow_indices, Tensor col_indices, Tensor values, "
        "int[4] input_shape, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def("_native_sparse_conv2d_dw(Tensor grad_output, Tensor input, Tensor crow_indices, Tensor col_indices, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def("_native_sparse_conv2d_backward(Tensor grad_output, Tensor input, Tensor crow_indices, Tensor col_indices, "
        "Tensor values, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> (Tensor, Tensor)");
  m.def("_native_topk_threshold(Tensor[] tensors, int k) -> Tensor");
  m.def("_native_regrow(Tensor mask, Tensor score, int k) -> Tensor");
}

TORCH_LIBRARY_IMPL(granet, CPU, m) {
  m.impl("_native_masked_positions_are_zero", &granet::masked_positions_are_zero_cpu);
  m.impl("_native_zero_masked_", &granet::zero_masked_cpu);
  m.impl("_native_pooled_mm", &granet::pooled_mm_cpu);
  m.impl("_native_polyphase_split", &granet::polyphase_split_cpu);
  m.impl("_native_polyphase_merge", &granet::polyphase_merge_cpu);
  m.impl("_native_masked_linear_small", &granet::masked_linear_small_cpu);
  m.impl("_native_masked_backward_small", &granet::masked_backward_small_cpu);
  m.impl("_native_csr_spmm", &granet::csr_spmm_cpu);
  m.impl("_native_csr_spmm_t", &granet::csr_spmm_t_cpu);
  m.impl("_native_csr_sddmm", &granet::csr_sddmm_cpu);
  m.impl("_native_csr_linear_backward", &granet::csr_linear_backward_cpu);
  m.impl("_native_csr_linear_bias", &granet::csr_linear_cpu);
  m.impl("_native_csr_linear_bias_panels", &granet::csr_linear_panels_cpu);
  m.impl("_native_csr_linear_backward_bias", &granet::csr_linear_backward_bias_cpu);
  m.impl("_native_bsr_spmm", &granet::bsr_spmm_cpu);
  m.impl("_native_bsr_spmm_t", &granet::bsr_spmm_t_cpu);
  m.impl("_native_bsr_sddmm", &granet::bsr_sddmm_cpu);
  m.impl("_native_sparse_conv2d", &granet::sparse_conv2d_cpu);
  m.impl("_native_sparse_conv2d_dx", &granet::sparse_conv2d_dx_cpu);
  m.impl("_native_sparse_conv2d_dw", &granet::sparse_conv2d_dw_cpu);
  m.impl("_native_sparse_conv2d_backward", &granet::sparse_conv2d_backward_cpu);
  m.impl("_native_topk_threshold", &granet::topk_threshold_cpu);
  m.impl("_native_regrow", &granet::regrow_cpu);
}

// An empty tensor list has no dispatch key: the dispatcher sends it here (Undefined resolves to
// CompositeExplicitAutograd), and the CPU kernel's checks name the argument. Non-CPU tensors land
// here too and get the same checks.
TORCH_LIBRARY_IMPL(granet, CompositeExplicitAutograd, m) {
  m.impl("_native_topk_threshold", &granet::topk_threshold_cpu);
}

#ifdef GRANET_WITH_CUDA
TORCH_LIBRARY_IMPL(granet, CUDA, m) {
  m.impl("_native_csr_spmm", &granet::csr_spmm_cuda);
}
#endif
