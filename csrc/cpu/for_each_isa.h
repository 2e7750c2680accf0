// Compiles the kernel header GRANET_ISA_IMPL once per CPU instruction set, each copy in its own
// namespace granet::cpu::<isa> and under its own target pragma. A kernel family's .cpp includes
// its torch headers first, then:
//     #define GRANET_ISA_IMPL "cpu/<family>_impl.h"
//     #include "cpu/for_each_isa.h"
// and calls the copy that cpu::active_isa() names (GRANET_ISA_CALL). The impl headers use plain
// C++ only (no STL, no torch): inline functions of shared headers would otherwise be compiled
// for one ISA and merged by the linker into code that runs on every CPU.
// No include guard: included once per kernel family.

#ifndef GRANET_ISA_IMPL
#error "define GRANET_ISA_IMPL before including for_each_isa.h"
#endif

#ifdef _OPENMP
#include <omp.h>  // the kernels' thread teams (simd_impl.h's this_team)
#endif
#if defined(__x86_64__)
#include <immintrin.h>  // simd_impl.h's explicit FMA (the intrinsics carry their own target attributes)
#endif

#define GRANET_ISA generic
#define GRANET_VECTOR_BYTES 16
#include GRANET_ISA_IMPL
#undef GRANET_ISA
#undef GRANET_VECTOR_BYTES

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c")
#define GRANET_ISA avx2
#define GRANET_VECTOR_BYTES 32
#include GRANET_ISA_IMPL
#undef GRANET_ISA
#undef GRANET_VECTOR_BYTES
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi,bmi2,f16c,prefer-vector-width=512")
#define GRANET_ISA avx512
#define GRANET_VECTOR_BYTES 64
#include GRANET_ISA_IMPL
#undef GRANET_ISA
#undef GRANET_VECTOR_BYTES
#pragma GCC pop_options
#endif

#undef GRANET_ISA_IMPL
