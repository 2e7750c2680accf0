// Run-time choice of the CPU instruction set. The kernels are compiled once per ISA (each
// kernels_<isa>.cpp includes kernels_impl.h under its own target pragma), so one binary runs
// on any x86-64 and uses AVX-512 / AVX2 where the CPU has them.
#pragma once

#include <cstdint>

namespace granet {
namespace cpu {

enum class Isa { generic = 0, avx2 = 1, avx512 = 2 };

// The best ISA this CPU supports, lowered by GRANET_CPU_ISA=generic|avx2 (for tests/benchmarks).
Isa active_isa();
const char* isa_name(Isa isa);

// One declaration block per ISA namespace; definitions live in kernels_impl.h.
#define GRANET_DECLARE_CPU_KERNELS(NS)                                                               \
  namespace NS {                                                                                     \
  void csr_spmm_f32(const int32_t* crow, const int32_t* col, const float* values, const float* x,  \
                    float* y, float* panel_buffer, int64_t n, int64_t m, int64_t k);                 \
  void csr_spmm_f64(const int32_t* crow, const int32_t* col, const double* values, const double* x, \
                    double* y, double* panel_buffer, int64_t n, int64_t m, int64_t k);               \
  }

GRANET_DECLARE_CPU_KERNELS(generic)
#if defined(__x86_64__)
GRANET_DECLARE_CPU_KERNELS(avx2)
GRANET_DECLARE_CPU_KERNELS(avx512)
#else
namespace avx2 = generic;
namespace avx512 = generic;
#endif

// Batch-panel width (elements) of the CSR kernels: activations are packed as [N/BT][K][BT] so each
// nonzero streams one contiguous BT-wide row and the output tile stays in registers.
template <typename T>
constexpr int64_t panel_width() { return sizeof(T) == 4 ? 32 : 16; }

template <typename T>
int64_t panel_buffer_elems(int64_t n, int64_t k) {
  const int64_t bt = panel_width<T>();
  return ((n + bt - 1) / bt) * k * bt;
}

}  // namespace cpu
}  // namespace granet
