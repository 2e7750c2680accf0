// CPU kernel bodies, compiled once per ISA. Each kernels_<isa>.cpp defines GRANET_ISA (the
// namespace) and sets a target pragma before including this file. Plain C++ only: no STL, no torch
// (their inline functions would be compiled for the wrong ISA and merged by the linker).
#ifndef GRANET_ISA
#error "define GRANET_ISA before including kernels_impl.h"
#endif

#include <cstdint>

namespace granet {
namespace cpu {
namespace GRANET_ISA {

namespace {

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// x [n][k] (row-major) -> panels [ceil(n/BT)][k][BT], zero-filled past n.
template <typename T, int BT>
void pack_panels(const T* x, T* panels, int64_t n, int64_t k) {
  const int64_t n_panels = (n + BT - 1) / BT;
  constexpr int64_t KB = 64;  // transpose in k-blocks so reads and writes both stay in cache
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t p = 0; p < n_panels; ++p) {
    for (int64_t k0 = 0; k0 < k; k0 += KB) {
      const int64_t k1 = min_i64(k0 + KB, k);
      T* dst = panels + p * k * BT;
      for (int b = 0; b < BT; ++b) {
        const int64_t row = p * BT + b;
        if (row < n) {
          const T* src = x + row * k;
          for (int64_t j = k0; j < k1; ++j) dst[j * BT + b] = src[j];
        } else {
          for (int64_t j = k0; j < k1; ++j) dst[j * BT + b] = T(0);
        }
      }
    }
  }
}

template <typename T, int BT>
void csr_spmm(const int32_t* crow, const int32_t* col, const T* values, const T* x, T* y, T* panels,
              int64_t n, int64_t m, int64_t k) {
  if (n == 0 || m == 0) return;
  pack_panels<T, BT>(x, panels, n, k);
  const int64_t n_panels = (n + BT - 1) / BT;
  constexpr int64_t RB = 32;  // output rows per task
  const int64_t row_blocks = (m + RB - 1) / RB;
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int64_t p = 0; p < n_panels; ++p) {
    for (int64_t rb = 0; rb < row_blocks; ++rb) {
      const T* panel = panels + p * k * BT;
      const int64_t lanes = min_i64(BT, n - p * BT);
      const int64_t i_end = min_i64((rb + 1) * RB, m);
      for (int64_t i = rb * RB; i < i_end; ++i) {
        // Two accumulator sets hide the FMA latency of consecutive nonzeros.
        T acc0[BT], acc1[BT];
#pragma omp simd
        for (int b = 0; b < BT; ++b) { acc0[b] = T(0); acc1[b] = T(0); }
        int32_t q = crow[i];
        const int32_t q_end = crow[i + 1];
        for (; q + 1 < q_end; q += 2) {
          const T v0 = values[q], v1 = values[q + 1];
          const T* r0 = panel + static_cast<int64_t>(col[q]) * BT;
          const T* r1 = panel + static_cast<int64_t>(col[q + 1]) * BT;
#pragma omp simd
          for (int b = 0; b < BT; ++b) { acc0[b] += v0 * r0[b]; acc1[b] += v1 * r1[b]; }
        }
        if (q < q_end) {
          const T v0 = values[q];
          const T* r0 = panel + static_cast<int64_t>(col[q]) * BT;
#pragma omp simd
          for (int b = 0; b < BT; ++b) acc0[b] += v0 * r0[b];
        }
        T* out = y + p * BT * m + i;
        for (int64_t b = 0; b < lanes; ++b) out[b * m] = acc0[b] + acc1[b];
      }
    }
  }
}

}  // namespace

void csr_spmm_f32(const int32_t* crow, const int32_t* col, const float* values, const float* x, float* y,
                  float* panel_buffer, int64_t n, int64_t m, int64_t k) {
  csr_spmm<float, 32>(crow, col, values, x, y, panel_buffer, n, m, k);
}

void csr_spmm_f64(const int32_t* crow, const int32_t* col, const double* values, const double* x, double* y,
                  double* panel_buffer, int64_t n, int64_t m, int64_t k) {
  csr_spmm<double, 16>(crow, col, values, x, y, panel_buffer, n, m, k);
}

}  // namespace GRANET_ISA
}  // namespace cpu
}  // namespace granet
