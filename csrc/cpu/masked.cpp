// Masked-dense support: whether a weight is already zero wherever its mask is False. The masked
// layout keeps that invariant, and then y = x @ (w * m)^T is a plain dense GEMM on w, with no
// masked copy of the weight (a 64 MB temporary for a 4096 x 4096 layer) on every call.
#include <ATen/ATen.h>

#include <cstdint>

#include "cpu/isa.h"
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

}  // namespace granet
