// Input checks shared by the CPU and CUDA entry points. Messages name the argument.
#include <ATen/ATen.h>

#include "granet.h"

namespace granet {

void check_csr_spmm_args(const char* op, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                         const at::Tensor& x) {
  TORCH_CHECK_VALUE(crow.dim() == 1 && crow.numel() >= 1, op, ": crow_indices must be 1-D with M+1 >= 1 entries, got shape ",
                    crow.sizes());
  TORCH_CHECK_VALUE(col.dim() == 1, op, ": col_indices must be 1-D, got shape ", col.sizes());
  TORCH_CHECK_VALUE(crow.scalar_type() == at::kInt, op, ": crow_indices must be int32, got ", crow.scalar_type());
  TORCH_CHECK_VALUE(col.scalar_type() == at::kInt, op, ": col_indices must be int32, got ", col.scalar_type());
  TORCH_CHECK_VALUE(values.dim() == 1 && values.numel() == col.numel(), op,
                    ": values must be 1-D with as many entries as col_indices (", col.numel(), "), got shape ",
                    values.sizes());
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D [N, K], got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                    ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(values.scalar_type() == x.scalar_type(), op, ": values dtype ", values.scalar_type(),
                    " does not match x dtype ", x.scalar_type());
  for (const at::Tensor* t : {&crow, &col, &values}) {
    TORCH_CHECK_VALUE(t->device() == x.device(), op, ": all arguments must be on x's device ", x.device(),
                      ", got one on ", t->device());
  }
}

void check_csr_indices(const char* op, const at::Tensor& crow_any, const at::Tensor& col_any, int64_t n_cols) {
  const at::Tensor crow = crow_any.to(at::kCPU).contiguous();
  const at::Tensor col = col_any.to(at::kCPU).contiguous();
  const int32_t* c = crow.data_ptr<int32_t>();
  const int64_t m = crow.numel() - 1;
  const int64_t nnz = col.numel();
  TORCH_CHECK_VALUE(c[0] == 0, op, ": crow_indices[0] must be 0, got ", c[0]);
  TORCH_CHECK_VALUE(c[m] == nnz, op, ": crow_indices[-1] must equal nnz = len(col_indices) = ", nnz, ", got ", c[m]);
  for (int64_t i = 0; i < m; ++i) {
    TORCH_CHECK_VALUE(c[i] <= c[i + 1], op, ": crow_indices must be non-decreasing, but crow_indices[", i, "] = ", c[i],
                      " > crow_indices[", i + 1, "] = ", c[i + 1]);
  }
  const int32_t* j = col.data_ptr<int32_t>();
  for (int64_t p = 0; p < nnz; ++p) {
    TORCH_CHECK_INDEX(j[p] >= 0 && j[p] < n_cols, op, ": col_indices[", p, "] = ", j[p], " is out of range [0, ", n_cols,
                      ")");
  }
}

}  // namespace granet
