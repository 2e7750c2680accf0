#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>

namespace granet {
namespace cpu {

namespace {

Isa detect() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::generic;
}

Isa lowered_by_env(Isa best) {
  const char* forced = std::getenv("GRANET_CPU_ISA");
  if (forced == nullptr) return best;
  Isa want = best;
  if (std::strcmp(forced, "generic") == 0) want = Isa::generic;
  else if (std::strcmp(forced, "avx2") == 0) want = Isa::avx2;
  else if (std::strcmp(forced, "avx512") == 0) want = Isa::avx512;
  // Never raise above what the CPU has.
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

}  // namespace

Isa active_isa() {
  static const Isa isa = lowered_by_env(detect());
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

}  // namespace cpu
}  // namespace granet
