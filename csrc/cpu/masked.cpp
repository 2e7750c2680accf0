// Masked-dense support: whether a weight is already zero wherever its mask is False. The masked
// layout keeps that invariant, and then y = x @ (w * m)^T is a plain dense GEMM on w, with no
// masked copy of the weight (a 64 MB temporary for a 4096 x 4096 layer) on every call.
#include <ATen/ATen.h>

#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/isa.h"
#include "cpu/output_pool.h"
#include "cpu/workspace.h"
#include "granet.h"

#define GRANET_ISA_IMPL "cpu/masked_impl.h"
#include "cpu/for_each_isa.h"

namespace granet {

void zero_masked_cpu(at::Tensor& grad, const at::Tensor& mask) {
  constexpr const char* op = "granet::_native_zero_masked_";
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool, op, ": mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK_VALUE(grad.sizes() == mask.sizes(), op, ": mask must have grad's shape ", grad.sizes(), ", got ",
                    mask.sizes());
  TORCH_CHECK_VALUE(grad.device().is_cpu() && mask.device().is_cpu(), op, ": needs CPU tensors");
  TORCH_CHECK_VALUE(grad.is_floating_point(), op, ": grad must be floating point, got ", grad.scalar_type());
  if (!grad.is_contiguous() || !mask.is_contiguous()) {
    grad.masked_fill_(mask.logical_not(), 0);
    return;
  }
  const bool* m = mask.data_ptr<bool>();
  const int64_t n = grad.numel();
  switch (grad.element_size()) {
    case 8: GRANET_ISA_CALL(zero_masked_positions<uint64_t>, static_cast<uint64_t*>(grad.data_ptr()), m, n); break;
    case 4: GRANET_ISA_CALL(zero_masked_positions<uint32_t>, static_cast<uint32_t*>(grad.data_ptr()), m, n); break;
    default: GRANET_ISA_CALL(zero_masked_positions<uint16_t>, static_cast<uint16_t*>(grad.data_ptr()), m, n); break;
  }
}

bool masked_positions_are_zero_cpu(const at::Tensor& weight, const at::Tensor& mask) {
  constexpr const char* op = "granet::_native_masked_positions_are_zero";
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool, op, ": mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK_VALUE(weight.sizes() == mask.sizes(), op, ": mask must have weight's shape ", weight.sizes(), ", got ",
                    mask.sizes());
  TORCH_CHECK_VALUE(weight.device().is_cpu() && mask.device().is_cpu(), op, ": needs CPU tensors");
  TORCH_CHECK_VALUE(weight.is_floating_point(), op, ": weight must be floating point, got ", weight.scalar_type());
  // Same memory order for both (a transposed pair counts); anything else: not known to hold.
  if (!(weight.is_contiguous() && mask.is_contiguous()) &&
      !(weight.t().is_contiguous() && mask.t().is_contiguous() && weight.dim() == 2))
    return false;
  const int64_t n = weight.numel();
  const bool* m = mask.data_ptr<bool>();
  bool ok = true;
  switch (weight.element_size()) {
    case 8: ok = GRANET_ISA_CALL(masked_positions_zero<uint64_t>, static_cast<const uint64_t*>(weight.data_ptr()), m, n); break;
    case 4: ok = GRANET_ISA_CALL(masked_positions_zero<uint32_t>, static_cast<const uint32_t*>(weight.data_ptr()), m, n); break;
    case 2: ok = GRANET_ISA_CALL(masked_positions_zero<uint16_t>, static_cast<const uint16_t*>(weight.data_ptr()), m, n); break;
    default: ok = false;
  }
  return ok;
}

at::Tensor pooled_mm_cpu(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "granet::_native_pooled_mm";
  TORCH_CHECK_VALUE(a.dim() == 2 && b.dim() == 2, op, ": a and b must be 2-D, got shapes ", a.sizes(), " and ",
                    b.sizes());
  TORCH_CHECK_VALUE(a.device().is_cpu() && b.device().is_cpu(), op, ": needs CPU tensors");
  TORCH_CHECK_VALUE(a.is_floating_point() && a.scalar_type() == b.scalar_type(), op,
                    ": a and b must share one floating-point dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK_VALUE(a.size(1) == b.size(0), op, ": a.shape[1] must be b.shape[0] = ", b.size(0), ", got ", a.size(1));
  at::Tensor out = cpu::empty_output({a.size(0), b.size(1)}, a.options());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->device().is_cpu() && bias->dim() == 1 && bias->size(0) == b.size(1) &&
                          bias->scalar_type() == a.scalar_type(),
                      op, ": bias must be a 1-D ", a.scalar_type(), " CPU tensor of ", b.size(1),
                      " entries, got shape ", bias->sizes(), ", dtype ", bias->scalar_type());
    at::addmm_out(out, *bias, a, b);
  } else {
    at::mm_out(out, a, b);
  }
  return out;
}

namespace {

// x [n, K] against weight / mask [M, K]: CPU, contiguous, float32/float64, mask bool.
void check_small_operands(const char* op, const char* x_name, const at::Tensor& x, const at::Tensor& mask,
                          const at::Tensor* weight) {
  check_dense(op, x_name, x);
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool && mask.dim() == 2, op, ": mask must be a 2-D bool tensor, got ",
                    mask.scalar_type(), " of shape ", mask.sizes());
  TORCH_CHECK_VALUE(x.device().is_cpu() && mask.device().is_cpu(), op, ": needs CPU tensors");
  TORCH_CHECK_VALUE(mask.is_contiguous(), op, ": mask must be contiguous");
  if (weight != nullptr) {
    TORCH_CHECK_VALUE(weight->device().is_cpu() && weight->is_contiguous(), op, ": weight must be a contiguous CPU tensor");
    TORCH_CHECK_VALUE(weight->scalar_type() == x.scalar_type(), op, ": weight dtype ", weight->scalar_type(),
                      " does not match ", x_name, " dtype ", x.scalar_type());
    TORCH_CHECK_VALUE(weight->sizes() == mask.sizes(), op, ": mask must have weight's shape ", weight->sizes(),
                      ", got ", mask.sizes());
  }
}

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

at::Tensor masked_linear_small_cpu(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& mask,
                                   const std::optional<at::Tensor>& bias_in) {
  constexpr const char* op = "granet::_native_masked_linear_small";
  check_small_operands(op, "x", x_in, mask, &weight);
  TORCH_CHECK_VALUE(x_in.size(1) == weight.size(1), op, ": x.shape[1] must be weight.shape[1] = ", weight.size(1),
                    ", got ", x_in.size(1));
  const int64_t n = x_in.size(0), M = weight.size(0), K = weight.size(1);
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    bias = bias_in->contiguous();
    TORCH_CHECK_VALUE(bias.device().is_cpu() && bias.dim() == 1 && bias.size(0) == M &&
                          bias.scalar_type() == x_in.scalar_type(),
                      op, ": bias must be a 1-D ", x_in.scalar_type(), " CPU tensor of ", M, " entries, got shape ",
                      bias.sizes(), ", dtype ", bias.scalar_type());
  }
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = cpu::empty_output({n, M}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "granet_masked_linear_small", [&] {
    GRANET_ISA_CALL(masked_linear_small<scalar_t>, x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                    mask.data_ptr<bool>(), bias.defined() ? bias.data_ptr<scalar_t>() : nullptr,
                    y.data_ptr<scalar_t>(), n, M, K);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> masked_backward_small_cpu(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                             const std::optional<at::Tensor>& weight_in,
                                                             const at::Tensor& mask, bool need_dx, bool need_dw) {
  constexpr const char* op = "granet::_native_masked_backward_small";
  const bool has_weight = weight_in.has_value() && weight_in->defined();
  TORCH_CHECK_VALUE(!need_dx || has_weight, op, ": dx needs the weight");
  check_small_operands(op, "dy", dy_in, mask, has_weight ? &*weight_in : nullptr);
  check_dense(op, "x", x_in);
  TORCH_CHECK_VALUE(x_in.device().is_cpu() && x_in.scalar_type() == dy_in.scalar_type(), op,
                    ": x must be a CPU tensor of dy's dtype ", dy_in.scalar_type());
  const int64_t n = dy_in.size(0), M = mask.size(0), K = mask.size(1);
  TORCH_CHECK_VALUE(dy_in.size(1) == M, op, ": dy.shape[1] must be mask.shape[0] = ", M, ", got ", dy_in.size(1));
  TORCH_CHECK_VALUE(x_in.size(0) == n, op, ": x and dy must have the same batch size, got ", x_in.size(0), " and ", n);
  TORCH_CHECK_VALUE(x_in.size(1) == K, op, ": x.shape[1] must be mask.shape[1] = ", K, ", got ", x_in.size(1));
  const at::Tensor dy = dy_in.contiguous(), x = x_in.contiguous();
  at::Tensor dx = need_dx ? cpu::empty_output({n, K}, dy.options()) : dy.new_empty({0});
  at::Tensor dw = need_dw ? cpu::empty_output({M, K}, dy.options()) : dy.new_empty({0});
  if (!need_dx && !need_dw) return {dx, dw};
  const int threads = max_threads();
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "granet_masked_backward_small", [&] {
    // dx is summed in per-thread buffers of padded rows; the kernel says how much they take
    scalar_t* bufs = need_dx ? cpu::scratch_of<scalar_t>(
                                   cpu::Scratch::c, static_cast<size_t>(GRANET_ISA_CALL(
                                                        masked_backward_buffer_elems<scalar_t>, threads, n, K)))
                             : nullptr;
    GRANET_ISA_CALL(masked_backward_small<scalar_t>, dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                    has_weight ? weight_in->data_ptr<scalar_t>() : nullptr, mask.data_ptr<bool>(),
                    need_dx ? dx.data_ptr<scalar_t>() : nullptr, need_dw ? dw.data_ptr<scalar_t>() : nullptr, bufs,
                    threads, n, M, K);
  });
  return {dx, dw};
}

}  // namespace granet
