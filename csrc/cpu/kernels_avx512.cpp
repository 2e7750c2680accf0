// AVX-512 build of the CPU kernels (chosen at run time, see isa.cpp).
#if defined(__x86_64__)
#include <cstdint>
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi,bmi2,f16c,prefer-vector-width=512")
#define GRANET_ISA avx512
#include "cpu/kernels_impl.h"
#pragma GCC pop_options
#endif
