// Masked-dense support: whether a weight is already zero wherever its mask is False. The masked
// layout keeps that invariant, and then y = x @ (w * m)^T is a plain dense GEMM on w, with no
// masked copy of the weight (a 64 MB temporary for a 4096 x 4096 layer) on every call.
#include <ATen/ATen.h>

#include <cstdint>

#include "granet.h"

namespace granet {

namespace {

// Branch-free so it vectorises: OR together the magnitude bits of every masked-out entry.
template <typename T, typename Bits>
bool all_masked_zero(const T* w_any, const bool* m, int64_t n) {
  static_assert(sizeof(T) == sizeof(Bits), "bit width");
  const Bits* w = reinterpret_cast<const Bits*>(w_any);
  const Bits magnitude = static_cast<Bits>(~(Bits(1) << (8 * sizeof(Bits) - 1)));
  Bits any = 0;
#pragma omp parallel for reduction(| : any) schedule(static)
  for (int64_t i = 0; i < n; ++i) any |= (w[i] & magnitude) & static_cast<Bits>(static_cast<Bits>(m[i]) - 1);
  return any == 0;
}

template <typename Bits>
void zero_masked(Bits* g, const bool* m, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) g[i] &= static_cast<Bits>(Bits(0) - static_cast<Bits>(m[i]));
}

}  // namespace

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
    case 8: zero_masked<uint64_t>(static_cast<uint64_t*>(grad.data_ptr()), m, n); break;
    case 4: zero_masked<uint32_t>(static_cast<uint32_t*>(grad.data_ptr()), m, n); break;
    default: zero_masked<uint16_t>(static_cast<uint16_t*>(grad.data_ptr()), m, n); break;
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
    case 8: ok = all_masked_zero<double, uint64_t>(weight.data_ptr<double>(), m, n); break;
    case 4: ok = all_masked_zero<float, uint32_t>(static_cast<const float*>(weight.data_ptr()), m, n); break;
    case 2: ok = all_masked_zero<uint16_t, uint16_t>(static_cast<const uint16_t*>(weight.data_ptr()), m, n); break;
    default: ok = false;
  }
  return ok;
}

}  // namespace granet
