// C++ test of the BSR kernels of every instruction set this CPU can run (generic, AVX2, AVX-512),
// each called directly (not through the run-time choice, which only ever picks one) and compared
// with a naive double-precision loop: dW = dy^T x on the blocks (both of its paths: block sizes a
// multiple of the vector width, and the transposed-dot path for the others) and y = x W^T.
// Built with the library's flags (-O3): a miscompile of one ISA's copy at -O3 (seen on AVX-512 with
// fp64, GCC 13.3, fixed in simd_impl.h's hsum4) fails here even on a CPU whose Python tests would
// run that ISA's kernels only for some shapes. Needs no torch. Exit status 0 when all checks pass.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/isa.h"
#define GRANET_ISA_IMPL "cpu/bsr_impl.h"
#include "cpu/for_each_isa.h"

namespace {

int g_checks = 0, g_failures = 0;

struct Problem {
  int64_t n, rows, cols, bs;
  std::vector<int32_t> crow, col;
};

Problem random_problem(std::mt19937& g, int64_t n, int64_t rows, int64_t cols, int64_t bs) {
  Problem p{n, rows, cols, bs, std::vector<int32_t>(rows + 1, 0), {}};
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j)
      if (g() % 3 == 0) p.col.push_back(static_cast<int32_t>(j));  // empty block rows happen
    p.crow[i + 1] = static_cast<int32_t>(p.col.size());
  }
  return p;
}

template <typename T>
std::vector<T> random_values(std::mt19937& g, int64_t count) {
  std::uniform_real_distribution<double> u(-1, 1);
  std::vector<T> v(count);
  for (auto& e : v) e = static_cast<T>(u(g));
  return v;
}

void expect_close(double err, double scale, double tol, const char* what, const char* isa, const char* dtype,
                  const Problem& p) {
  ++g_checks;
  if (!(err <= tol * std::max(scale, 1.0))) {
    ++g_failures;
    std::fprintf(stderr, "FAIL: %s [%s, %s] bs=%ld n=%ld: max error %.3g (scale %.3g)\n", what, isa, dtype,
                 static_cast<long>(p.bs), static_cast<long>(p.n), err, scale);
  }
}

// Entry points of one ISA's copy, so that each check runs against every copy the CPU can execute.
template <typename T>
struct IsaKernels {
  const char* name;
  void (*sddmm)(const int32_t*, const int32_t*, const T*, const T*, T*, T*, T*, int64_t, int64_t, int64_t, int64_t);
  void (*spmm)(const int32_t*, const int32_t*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t, int64_t);
};

template <typename T>
std::vector<IsaKernels<T>> runnable_isas() {
  namespace cpu = granet::cpu;
  std::vector<IsaKernels<T>> out = {{"generic", cpu::generic::bsr_sddmm<T>, cpu::generic::bsr_spmm<T>}};
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    out.push_back({"avx2", cpu::avx2::bsr_sddmm<T>, cpu::avx2::bsr_spmm<T>});
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq"))
    out.push_back({"avx512", cpu::avx512::bsr_sddmm<T>, cpu::avx512::bsr_spmm<T>});
#endif
  return out;
}

template <typename T>
void check_problem(const IsaKernels<T>& isa, const char* dtype, const Problem& p, std::mt19937& g, double tol) {
  const int64_t m = p.rows * p.bs, k = p.cols * p.bs, bs2 = p.bs * p.bs, nnzb = static_cast<int64_t>(p.col.size());
  const std::vector<T> dy = random_values<T>(g, p.n * m), x = random_values<T>(g, p.n * k),
                       w = random_values<T>(g, nnzb * bs2);
  const int64_t ws = granet::cpu::panel_buffer_elems<T>(p.n, std::max(m, k)) + 64;
  std::vector<T> dy_ws(ws), x_ws(ws), dw(nnzb * bs2, T(-7)), y(p.n * m, T(-7));

  isa.sddmm(p.crow.data(), p.col.data(), dy.data(), x.data(), dw.data(), dy_ws.data(), x_ws.data(), p.n, p.rows, k,
            p.bs);
  double err = 0, scale = 0;
  for (int64_t i = 0; i < p.rows; ++i)
    for (int32_t q = p.crow[i]; q < p.crow[i + 1]; ++q)
      for (int64_t r = 0; r < p.bs; ++r)
        for (int64_t c = 0; c < p.bs; ++c) {
          double s = 0;
          for (int64_t t = 0; t < p.n; ++t)
            s += static_cast<double>(dy[t * m + i * p.bs + r]) * static_cast<double>(x[t * k + p.col[q] * p.bs + c]);
          err = std::max(err, std::fabs(s - static_cast<double>(dw[(q * p.bs + r) * p.bs + c])));
          scale = std::max(scale, std::fabs(s));
        }
  expect_close(err, scale, tol, "bsr_sddmm", isa.name, dtype, p);

  isa.spmm(p.crow.data(), p.col.data(), w.data(), x.data(), y.data(), x_ws.data(), p.n, p.rows, k, p.bs);
  err = 0, scale = 0;
  for (int64_t t = 0; t < p.n; ++t)
    for (int64_t i = 0; i < p.rows; ++i)
      for (int64_t r = 0; r < p.bs; ++r) {
        double s = 0;
        for (int32_t q = p.crow[i]; q < p.crow[i + 1]; ++q)
          for (int64_t c = 0; c < p.bs; ++c)
            s += static_cast<double>(w[(q * p.bs + r) * p.bs + c]) * static_cast<double>(x[t * k + p.col[q] * p.bs + c]);
        err = std::max(err, std::fabs(s - static_cast<double>(y[t * m + i * p.bs + r])));
        scale = std::max(scale, std::fabs(s));
      }
  expect_close(err, scale, tol, "bsr_spmm", isa.name, dtype, p);
}

template <typename T>
void check_dtype(const char* dtype, double tol) {
  std::mt19937 g(2026);
  for (const auto& isa : runnable_isas<T>())
    for (int64_t bs : {1, 3, 4, 5, 8, 12, 16, 32})
      for (int64_t n : {1, 7, 33, 70}) check_problem<T>(isa, dtype, random_problem(g, n, 5, 6, bs), g, tol);
}

}  // namespace

int main() {
  check_dtype<float>("float32", 1e-5);
  check_dtype<double>("float64", 1e-12);
  std::printf("isa kernels: %d checks, %d failures (ISAs: %zu runnable)\n", g_checks, g_failures,
              runnable_isas<float>().size());
  return g_failures == 0 ? 0 : 1;
}
