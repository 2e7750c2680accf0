// Masked-dense helpers, compiled once per ISA by for_each_isa.h (namespace granet::cpu::GRANET_ISA):
// the mask's bytes widen to the weight's width in vector registers (vpmovzxbd on AVX2), which the
// baseline x86-64 build cannot do; both loops are branch-free so they vectorise. Plain C++ only.

namespace granet {
namespace cpu {
namespace GRANET_ISA {

// Whether every entry of w (as raw bits) is +-0 wherever m is false.
template <typename Bits>
bool masked_positions_zero(const Bits* w, const bool* m_any, int64_t n) {
  const unsigned char* m = reinterpret_cast<const unsigned char*>(m_any);
  const Bits magnitude = static_cast<Bits>(~(Bits(1) << (8 * sizeof(Bits) - 1)));
  Bits any = 0;
#pragma omp parallel for reduction(| : any) schedule(static)
  for (int64_t i = 0; i < n; ++i) any |= (w[i] & magnitude) & static_cast<Bits>(static_cast<Bits>(m[i] != 0) - 1);
  return any == 0;
}

// g = 0 wherever m is false (as raw bits: no floating-point operation, -0 and NaN included).
template <typename Bits>
void zero_masked_positions(Bits* g, const bool* m_any, int64_t n) {
  const unsigned char* m = reinterpret_cast<const unsigned char*>(m_any);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) g[i] &= static_cast<Bits>(Bits(0) - static_cast<Bits>(m[i] != 0));
}

}  // namespace GRANET_ISA
}  // namespace cpu
}  // namespace granet
