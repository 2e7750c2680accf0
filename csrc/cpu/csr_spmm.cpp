#include <ATen/ATen.h>

#include "cpu/isa.h"
#include "granet.h"

namespace granet {

namespace {

template <typename T, typename Fn>
void run_panels(Fn fn, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, const at::Tensor& x,
                at::Tensor& y) {
  const int64_t n = x.size(0), k = x.size(1), m = y.size(1);
  at::Tensor panels = at::empty({cpu::panel_buffer_elems<T>(n, k)}, x.options());
  fn(crow.data_ptr<int32_t>(), col.data_ptr<int32_t>(), values.data_ptr<T>(), x.data_ptr<T>(), y.data_ptr<T>(),
     panels.data_ptr<T>(), n, m, k);
}

}  // namespace

at::Tensor csr_spmm_cpu(const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& values_in,
                        const at::Tensor& x_in) {
  constexpr const char* op = "granet::csr_spmm";
  check_csr_spmm_args(op, crow_in, col_in, values_in, x_in);
  TORCH_CHECK_VALUE(x_in.device().is_cpu(), op, ": the CPU kernel needs CPU tensors, got x on ", x_in.device());
  const at::Tensor crow = crow_in.contiguous(), col = col_in.contiguous();
  const at::Tensor values = values_in.contiguous(), x = x_in.contiguous();
  check_csr_indices(op, crow, col, x.size(1));

  const int64_t m = crow.numel() - 1;
  at::Tensor y = at::empty({x.size(0), m}, x.options());
  const cpu::Isa isa = cpu::active_isa();
  if (x.scalar_type() == at::kFloat) {
    auto fn = isa == cpu::Isa::avx512 ? cpu::avx512::csr_spmm_f32
              : isa == cpu::Isa::avx2 ? cpu::avx2::csr_spmm_f32
                                      : cpu::generic::csr_spmm_f32;
    run_panels<float>(fn, crow, col, values, x, y);
  } else {
    auto fn = isa == cpu::Isa::avx512 ? cpu::avx512::csr_spmm_f64
              : isa == cpu::Isa::avx2 ? cpu::avx2::csr_spmm_f64
                                      : cpu::generic::csr_spmm_f64;
    run_panels<double>(fn, crow, col, values, x, y);
  }
  return y;
}

}  // namespace granet
