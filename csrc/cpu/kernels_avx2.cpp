// AVX2 + FMA build of the CPU kernels (chosen at run time, see isa.cpp).
#if defined(__x86_64__)
#include <cstdint>
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c")
#define GRANET_ISA avx2
#include "cpu/kernels_impl.h"
#pragma GCC pop_options
#endif
