// Input checks shared by the CPU and CUDA entry points. Messages name the op and the argument.
#include <ATen/ATen.h>

#include "granet.h"

namespace granet {

void check_dense(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": ", name, " must be 2-D, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
                    " must be float32 or float64, got ", t.scalar_type());
}

void check_index_range(const char* op, const char* name, const at::Tensor& idx_any, int64_t bound) {
  TORCH_CHECK_VALUE(idx_any.dim() == 1 && idx_any.scalar_type() == at::kInt, op, ": ", name,
                    " must be a 1-D int32 tensor, got ", idx_any.scalar_type(), " of shape ", idx_any.sizes());
  const at::Tensor idx = idx_any.to(at::kCPU).contiguous();
  const int32_t* j = idx.data_ptr<int32_t>();
  for (int64_t p = 0; p < idx.numel(); ++p) {
    TORCH_CHECK_INDEX(j[p] >= 0 && j[p] < bound, op, ": ", name, "[", p, "] = ", j[p], " is out of range [0, ", bound,
                      ")");
  }
}

void check_compressed_index(const char* op, const char* ptr_name, const at::Tensor& ptr_any, const char* idx_name,
                            const at::Tensor& idx, int64_t bound) {
  TORCH_CHECK_VALUE(ptr_any.dim() == 1 && ptr_any.numel() >= 1, op, ": ", ptr_name,
                    " must be 1-D with at least one entry, got shape ", ptr_any.sizes());
  TORCH_CHECK_VALUE(ptr_any.scalar_type() == at::kInt, op, ": ", ptr_name, " must be int32, got ",
                    ptr_any.scalar_type());
  TORCH_CHECK_VALUE(ptr_any.device() == idx.device(), op, ": ", ptr_name, " and ", idx_name,
                    " must be on one device");
  const at::Tensor ptr = ptr_any.to(at::kCPU).contiguous();
  const int32_t* c = ptr.data_ptr<int32_t>();
  const int64_t rows = ptr.numel() - 1;
  TORCH_CHECK_VALUE(c[0] == 0, op, ": ", ptr_name, "[0] must be 0, got ", c[0]);
  TORCH_CHECK_VALUE(c[rows] == idx.numel(), op, ": ", ptr_name, "[-1] must equal len(", idx_name, ") = ", idx.numel(),
                    ", got ", c[rows]);
  for (int64_t i = 0; i < rows; ++i) {
    TORCH_CHECK_VALUE(c[i] <= c[i + 1], op, ": ", ptr_name, " must be non-decreasing, but ", ptr_name, "[", i,
                      "] = ", c[i], " > ", ptr_name, "[", i + 1, "] = ", c[i + 1]);
  }
  check_index_range(op, idx_name, idx, bound);
}

void check_same_device(const char* op, const at::Tensor& ref, std::initializer_list<const at::Tensor*> others) {
  for (const at::Tensor* t : others) {
    TORCH_CHECK_VALUE(t->device() == ref.device(), op, ": all arguments must be on one device; found ", ref.device(),
                      " and ", t->device());
  }
}

void check_csr_spmm_meta(const char* op, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                         const at::Tensor& x) {
  check_dense(op, "x", x);
  TORCH_CHECK_VALUE(values.dim() == 1 && values.numel() == col.numel(), op,
                    ": values must be 1-D with as many entries as col_indices (", col.numel(), "), got shape ",
                    values.sizes());
  TORCH_CHECK_VALUE(values.scalar_type() == x.scalar_type(), op, ": values dtype ", values.scalar_type(),
                    " does not match x dtype ", x.scalar_type());
  check_same_device(op, x, {&crow, &col, &values});
}

void check_csr_spmm_args(const char* op, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                         const at::Tensor& x) {
  check_csr_spmm_meta(op, crow, col, values, x);
  check_compressed_index(op, "crow_indices", crow, "col_indices", col, x.size(1));
}

}  // namespace granet
