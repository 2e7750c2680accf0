// CPU entry points of the BSR products (square blocks, any bs >= 1): checks, workspaces, ISA choice.
#include <ATen/ATen.h>

#include "cpu/isa.h"
#include "cpu/output_pool.h"
#include "granet.h"

#define GRANET_ISA_IMPL "cpu/bsr_impl.h"
#include "cpu/for_each_isa.h"

namespace granet {

namespace {

void check_cpu(const char* op, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": the CPU kernel needs CPU tensors, got one on ", t.device());
}

// values [nnzb, bs, bs] (square blocks, bs >= 1), one block per entry of idx, of dense's dtype.
// Returns bs.
int64_t check_blocks(const char* op, const at::Tensor& values, const char* idx_name, const at::Tensor& idx,
                     const char* dense_name, const at::Tensor& dense) {
  TORCH_CHECK_VALUE(values.dim() == 3, op, ": values must be 3-D [nnzb, bs, bs], got shape ", values.sizes());
  TORCH_CHECK_VALUE(values.size(1) == values.size(2) && values.size(1) >= 1, op,
                    ": values must hold square blocks [nnzb, bs, bs], got shape ", values.sizes());
  TORCH_CHECK_VALUE(idx.dim() == 1, op, ": ", idx_name, " must be 1-D, got shape ", idx.sizes());
  TORCH_CHECK_VALUE(values.size(0) == idx.numel(), op, ": values has ", values.size(0), " blocks but ", idx_name,
                    " has ", idx.numel(), " entries");
  TORCH_CHECK_VALUE(values.scalar_type() == dense.scalar_type(), op, ": values dtype ", values.scalar_type(),
                    " does not match ", dense_name, " dtype ", dense.scalar_type());
  return values.size(1);
}

void check_multiple(const char* op, const char* name, const at::Tensor& t, int64_t dim, int64_t bs) {
  TORCH_CHECK_VALUE(t.size(dim) % bs == 0, op, ": ", name, ".shape[", dim, "] = ", t.size(dim),
                    " must be a multiple of the block size ", bs);
}

template <typename T>
at::Tensor workspace(int64_t n, int64_t features, const at::TensorOptions& options) {
  return cpu::empty_output({cpu::panel_buffer_elems<T>(n, features)}, options);
}

}  // namespace

at::Tensor bsr_spmm_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values_in,
                        const at::Tensor& x_in) {
  constexpr const char* op = "granet::bsr_spmm";
  check_dense(op, "x", x_in);
  check_cpu(op, x_in);
  check_same_device(op, x_in, {&crow, &col, &values_in});
  const int64_t bs = check_blocks(op, values_in, "col_indices", col, "x", x_in);
  check_multiple(op, "x", x_in, 1, bs);
  check_compressed_index(op, "crow_indices", crow, "col_indices", col, x_in.size(1) / bs);
  const int64_t n = x_in.size(0), k = x_in.size(1), rows = crow.numel() - 1;
  const at::Tensor c = crow.contiguous(), j = col.contiguous(), values = values_in.contiguous(),
                   x = x_in.contiguous();
  at::Tensor y = cpu::empty_output({n, rows * bs}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "granet_bsr_spmm_cpu", [&] {
    at::Tensor x_ws = workspace<scalar_t>(n, k, x.options());
    GRANET_ISA_CALL(bsr_spmm<scalar_t>, c.data_ptr<int32_t>(), j.data_ptr<int32_t>(), values.data_ptr<scalar_t>(),
                    x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x_ws.data_ptr<scalar_t>(), n, rows, k, bs);
  });
  return y;
}

at::Tensor bsr_spmm_t_cpu(const at::Tensor& ccol, const at::Tensor& row, const at::Tensor& perm,
                          const at::Tensor& values_in, const at::Tensor& dy_in) {
  constexpr const char* op = "granet::bsr_spmm_t";
  check_dense(op, "dy", dy_in);
  check_cpu(op, dy_in);
  check_same_device(op, dy_in, {&ccol, &row, &perm, &values_in});
  const int64_t bs = check_blocks(op, values_in, "row_indices", row, "dy", dy_in);
  TORCH_CHECK_VALUE(perm.dim() == 1 && perm.scalar_type() == at::kInt, op, ": perm must be a 1-D int32 tensor, got ",
                    perm.scalar_type(), " of shape ", perm.sizes());
  TORCH_CHECK_VALUE(perm.numel() == row.numel(), op, ": perm has ", perm.numel(), " entries but row_indices has ",
                    row.numel());
  check_multiple(op, "dy", dy_in, 1, bs);
  check_compressed_index(op, "ccol_indices", ccol, "row_indices", row, dy_in.size(1) / bs);
  check_index_range(op, "perm", perm, values_in.size(0));
  const int64_t n = dy_in.size(0), m = dy_in.size(1), cols = ccol.numel() - 1;
  const at::Tensor cc = ccol.contiguous(), r = row.contiguous(), pm = perm.contiguous(),
                   values = values_in.contiguous(), dy = dy_in.contiguous();
  at::Tensor dx = cpu::empty_output({n, cols * bs}, dy.options());
  if (dx.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "granet_bsr_spmm_t_cpu", [&] {
    at::Tensor dy_ws = workspace<scalar_t>(n, m, dy.options());
    GRANET_ISA_CALL(bsr_spmm_t<scalar_t>, cc.data_ptr<int32_t>(), r.data_ptr<int32_t>(), pm.data_ptr<int32_t>(),
                    values.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                    dy_ws.data_ptr<scalar_t>(), n, m, cols, bs);
  });
  return dx;
}

at::Tensor bsr_sddmm_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& dy_in,
                         const at::Tensor& x_in, int64_t blocksize) {
  constexpr const char* op = "granet::bsr_sddmm";
  TORCH_CHECK_VALUE(blocksize >= 1, op, ": blocksize must be a positive integer, got ", blocksize);
  const int64_t bs = blocksize;
  check_dense(op, "dy", dy_in);
  check_dense(op, "x", x_in);
  check_cpu(op, x_in);
  check_same_device(op, x_in, {&crow, &col, &dy_in});
  TORCH_CHECK_VALUE(dy_in.scalar_type() == x_in.scalar_type(), op, ": dy dtype ", dy_in.scalar_type(),
                    " does not match x dtype ", x_in.scalar_type());
  TORCH_CHECK_VALUE(dy_in.size(0) == x_in.size(0), op, ": dy.shape[0] must be ", x_in.size(0),
                    " (the batch size of x), got shape ", dy_in.sizes());
  check_multiple(op, "x", x_in, 1, bs);
  check_compressed_index(op, "crow_indices", crow, "col_indices", col, x_in.size(1) / bs);
  const int64_t rows = crow.numel() - 1;
  TORCH_CHECK_VALUE(dy_in.size(1) == rows * bs, op, ": dy.shape[1] must be ", rows * bs,
                    " (block rows * blocksize), got shape ", dy_in.sizes());
  const int64_t n = x_in.size(0), k = x_in.size(1), m = dy_in.size(1);
  const at::Tensor c = crow.contiguous(), j = col.contiguous(), dy = dy_in.contiguous(), x = x_in.contiguous();
  at::Tensor out = cpu::empty_output({col.numel(), bs, bs}, x.options());
  if (out.numel() == 0) return out;
  if (n == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "granet_bsr_sddmm_cpu", [&] {
    at::Tensor dy_ws = workspace<scalar_t>(n, m, x.options()), x_ws = workspace<scalar_t>(n, k, x.options());
    GRANET_ISA_CALL(bsr_sddmm<scalar_t>, c.data_ptr<int32_t>(), j.data_ptr<int32_t>(), dy.data_ptr<scalar_t>(),
                    x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), dy_ws.data_ptr<scalar_t>(),
                    x_ws.data_ptr<scalar_t>(), n, rows, k, bs);
  });
  return out;
}

}  // namespace granet
