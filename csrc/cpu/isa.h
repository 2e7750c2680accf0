// Run-time choice of the CPU instruction set. The kernels are compiled once per ISA (see
// for_each_isa.h), so one binary runs on any x86-64 and uses AVX-512 / AVX2 where the CPU has them.
#pragma once

#include <cstdint>

namespace granet {
namespace cpu {

enum class Isa { generic = 0, avx2 = 1, avx512 = 2 };

// The best ISA this CPU supports, lowered by GRANET_CPU_ISA=generic|avx2 (for tests/benchmarks).
Isa active_isa();
const char* isa_name(Isa isa);

// Calls the copy of kernel `fn` compiled for the active ISA (see for_each_isa.h).
#if defined(__x86_64__)
#define GRANET_ISA_CALL(fn, ...)                                                     \
  (::granet::cpu::active_isa() == ::granet::cpu::Isa::avx512 ? ::granet::cpu::avx512::fn(__VA_ARGS__) \
   : ::granet::cpu::active_isa() == ::granet::cpu::Isa::avx2 ? ::granet::cpu::avx2::fn(__VA_ARGS__) \
                                                             : ::granet::cpu::generic::fn(__VA_ARGS__))
// The same, but the AVX2 copy where the CPU has AVX-512: for kernels whose AVX-512 copy measured
// slower than their AVX2 copy on an AVX-512 host (see where it is used).
#define GRANET_ISA_CALL_AT_MOST_AVX2(fn, ...)                                       \
  (::granet::cpu::active_isa() != ::granet::cpu::Isa::generic ? ::granet::cpu::avx2::fn(__VA_ARGS__) \
                                                             : ::granet::cpu::generic::fn(__VA_ARGS__))
#else
#define GRANET_ISA_CALL(fn, ...) ::granet::cpu::generic::fn(__VA_ARGS__)
#define GRANET_ISA_CALL_AT_MOST_AVX2(fn, ...) ::granet::cpu::generic::fn(__VA_ARGS__)
#endif

// Batch panels of the CSR kernels: activations are packed as [N/BT][K][BT] so each nonzero streams
// one contiguous BT-wide row (one cache line) and the output tile stays in registers. One cache
// line per row keeps a whole 4096-feature panel (256 KB) inside a 512 KB L2.
constexpr int64_t kPanelBytes = 64;

template <typename T>
constexpr int64_t panel_width() { return kPanelBytes / sizeof(T); }

template <typename T>
int64_t panel_buffer_elems(int64_t n, int64_t k) {
  const int64_t bt = panel_width<T>();
  return ((n + bt - 1) / bt) * k * bt;
}

}  // namespace cpu
}  // namespace granet
