// Masked-dense helpers, compiled once per ISA by for_each_isa.h (namespace granet::cpu::GRANET_ISA):
// the mask's bytes widen to the weight's width in vector registers (vpmovzxbd on AVX2), which the
// baseline x86-64 build cannot do; both loops are branch-free so they vectorise. Plain C++ only.
// Small batches also get fused products that apply the mask as they read the weight (below).

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

namespace {

#include "cpu/simd_impl.h"

// The weight vector at w with the lanes whose mask byte is 0 cleared (raw bits: +0 there, whatever
// the weight holds, NaN included, as torch.where(mask, w, 0) gives).
template <typename T>
inline typename Simd<T>::vec masked_load(const T* w, const unsigned char* m) {
  using S = Simd<T>;
  typedef typename IntOf<T>::type ivec __attribute__((vector_size(GRANET_VECTOR_BYTES)));
  typedef unsigned char bytes __attribute__((vector_size(S::lanes)));
  bytes b;
  __builtin_memcpy(&b, m, sizeof(b));
  const ivec keep = __builtin_convertvector(b != 0, ivec);  // -1 (all bits) where kept, else 0
  ivec bits;
  __builtin_memcpy(&bits, w, sizeof(bits));
  bits &= keep;
  typename S::vec out;
  __builtin_memcpy(&out, &bits, sizeof(out));
  return out;
}

template <typename T>
inline T masked_scalar(const T* w, const unsigned char* m, int64_t k) {
  return m[k] != 0 ? w[k] : T(0);
}

// out[r][b] = <x row b, w row r masked> for R rows of w and NB rows of x: the R masked weight
// vectors are loaded once per step and used NB times.
template <typename T, int R, int NB>
inline void masked_dots(const T* const* xr, const T* const* wr, const unsigned char* const* mr, int64_t K,
                        T (*out)[4]) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int L = S::lanes;
  vec acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = vec{};
  int64_t k = 0;
  for (; k + L <= K; k += L) {
    vec wm[R];
    for (int r = 0; r < R; ++r) wm[r] = masked_load<T>(wr[r] + k, mr[r] + k);
    for (int b = 0; b < NB; ++b) {
      const vec xv = S::load(xr[b] + k);
      for (int r = 0; r < R; ++r) acc[r][b] = S::fmadd(wm[r], xv, acc[r][b]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) {
      T s = S::hsum(acc[r][b]);
      for (int64_t q = k; q < K; ++q) s = fmadd(masked_scalar(wr[r], mr[r], q), xr[b][q], s);
      out[r][b] = s;
    }
}

// Rows [o0, o0 + R) of y for every batch row, over the columns [k0, k1) of W, in groups of up to
// NB batch rows: the first column block writes y (with the bias), later ones add to it.
template <typename T, int R, int NB>
inline void masked_linear_group(const T* x, const T* w, const unsigned char* m, const T* bias, T* y, int64_t o0,
                                int64_t n, int64_t M, int64_t K, int64_t k0, int64_t k1) {
  const int64_t rows = min_i64(R, M - o0);
  const T* wr[R];
  const unsigned char* mr[R];
  for (int r = 0; r < R; ++r) {  // a short last group repeats its first row (results dropped)
    const int64_t o = r < rows ? o0 + r : o0;
    wr[r] = w + o * K + k0;
    mr[r] = m + o * K + k0;
  }
  for (int64_t b0 = 0; b0 < n; b0 += NB) {
    const int nb = static_cast<int>(min_i64(NB, n - b0));
    const T* xr[4];
    for (int b = 0; b < 4; ++b) xr[b] = x + (b0 + (b < nb ? b : 0)) * K + k0;
    T out[R][4];
    switch (nb) {
      case 4: masked_dots<T, R, (NB >= 4 ? 4 : 1)>(xr, wr, mr, k1 - k0, out); break;
      case 3: masked_dots<T, R, (NB >= 3 ? 3 : 1)>(xr, wr, mr, k1 - k0, out); break;
      case 2: masked_dots<T, R, (NB >= 2 ? 2 : 1)>(xr, wr, mr, k1 - k0, out); break;
      default: masked_dots<T, R, 1>(xr, wr, mr, k1 - k0, out);
    }
    for (int b = 0; b < nb; ++b)
      for (int64_t r = 0; r < rows; ++r) {
        T& yo = y[(b0 + b) * M + o0 + r];
        yo = k0 == 0 ? out[r][b] + (bias ? bias[o0 + r] : T(0)) : yo + out[r][b];
      }
  }
}

// Row stride of the backward's dx accumulators: K plus one cache line, so that the rows of a batch
// are not 4 KB apart (when K is a multiple of 1024 floats, each row's store made the next row's load
// wait on it: 4K aliasing, measured 4x slower at K = 1024).
template <typename T>
inline int64_t masked_dx_stride(int64_t K) {
  return K + 64 / int64_t(sizeof(T));
}

// y[b][o] = sum_k x[b][k] * (m[o][k] ? w[o][k] : 0) (+ bias[o]); x [n][K], w / m [M][K], y [n][M],
// all contiguous. For small batches: W and its mask are read once from memory (the dense route
// reads the weight twice, once to check it against the mask and once in the GEMM). One batch row:
// four rows of W at a time (four independent sums); more: two rows of W against four batch rows,
// so that each masked weight vector feeds four FMAs. Threads take rows of W.
template <typename T>
void masked_linear_rows(const T* x, const T* w, const bool* m_any, const T* bias, T* y, int64_t n, int64_t M,
                        int64_t K) {
  const unsigned char* m = reinterpret_cast<const unsigned char*>(m_any);
  const int64_t R = n == 1 ? 4 : 2;
  const int64_t groups = (M + R - 1) / R;
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < groups; ++g) {
    if (n == 1) masked_linear_group<T, 4, 1>(x, w, m, bias, y, g * R, n, M, K, 0, K);
    else masked_linear_group<T, 2, 4>(x, w, m, bias, y, g * R, n, M, K, 0, K);
  }
}

// R rows [o0, o0 + R) of W:  dx[b][:] += sum_r dy[b][o_r] * wm[o_r][:]   (DX)
//                            dw[o_r][:] = m[o_r][:] ? sum_b dy[b][o_r] * x[b][:] : 0   (DW)
template <typename T, int R, bool DX, bool DW>
inline void masked_rows_backward_group(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                                       const unsigned char* __restrict__ m, T* __restrict__ dx, T* __restrict__ dw,
                                       int64_t ldd, int64_t o0, int64_t n, int64_t M, int64_t K, int64_t k0,
                                       int64_t k1) {
  using S = Simd<T>;
  using vec = typename S::vec;
  typedef typename IntOf<T>::type ivec __attribute__((vector_size(GRANET_VECTOR_BYTES)));
  constexpr int L = S::lanes;
  int64_t k = k0;
  for (; k + L <= k1; k += L) {
    vec wm[R], acc[R];
    for (int r = 0; r < R; ++r) {
      if (DX) wm[r] = masked_load<T>(w + (o0 + r) * K + k, m + (o0 + r) * K + k);
      acc[r] = vec{};
    }
    for (int64_t b = 0; b < n; ++b) {
      vec s[R];  // dy[b][o0 + r], broadcast once for both products
      for (int r = 0; r < R; ++r) s[r] = S::splat(dy[b * M + o0 + r]);
      if (DX) {
        // Two short chains instead of one of R dependent FMAs through the dx vector.
        vec d0 = S::load(dx + b * ldd + k), d1 = vec{};
        for (int r = 0; r < R; ++r) {
          if (r & 1) d1 = S::fmadd(s[r], wm[r], d1);
          else d0 = S::fmadd(s[r], wm[r], d0);
        }
        S::store(dx + b * ldd + k, d0 + d1);
      }
      if (DW) {
        const vec xv = S::load(x + b * K + k);
        for (int r = 0; r < R; ++r) acc[r] = S::fmadd(s[r], xv, acc[r]);
      }
    }
    if (DW)
      for (int r = 0; r < R; ++r) {
        typedef unsigned char bytes __attribute__((vector_size(L)));
        bytes mb;
        __builtin_memcpy(&mb, m + (o0 + r) * K + k, sizeof(mb));
        ivec bits;
        __builtin_memcpy(&bits, &acc[r], sizeof(bits));
        bits &= __builtin_convertvector(mb != 0, ivec);
        __builtin_memcpy(dw + (o0 + r) * K + k, &bits, sizeof(bits));
      }
  }
  for (; k < k1; ++k)
    for (int r = 0; r < R; ++r) {
      const int64_t o = o0 + r;
      const bool kept = m[o * K + k] != 0;
      const T wm = DX ? masked_scalar(w + o * K, m + o * K, k) : T(0);
      T a = T(0);
      for (int64_t b = 0; b < n; ++b) {
        const T s = dy[b * M + o];
        if (DX) dx[b * ldd + k] = fmadd(s, wm, dx[b * ldd + k]);  // as the vector columns: inf / NaN in dy times 0 is NaN
        if (DW) a = fmadd(s, x[b * K + k], a);
      }
      if (DW) dw[o * K + k] = kept ? a : T(0);
    }
}

// dx = dy @ (w * m) (DX; dx [n][K] is overwritten) and dw = (dy^T @ x) * m (DW), for small batches
// in one pass over W and its mask (dy [n][M], x [n][K]). Threads take rows of W; each sums its dx
// part in its own buffer (bufs: threads x n x masked_dx_stride(K); unused without DX), added in
// thread order: deterministic for a given thread count.
template <typename T, bool DX, bool DW>
void masked_rows_backward_impl(const T* dy, const T* x, const T* w, const unsigned char* m, T* dx, T* dw, T* bufs,
                               int max_threads, int64_t n, int64_t M, int64_t K) {
  constexpr int R = 4;
#pragma omp parallel num_threads(max_threads)
  {
    const Team team = this_team();
    const int64_t nt = team.size, t = team.id;
    const int64_t groups = (M + R - 1) / R;
    const int64_t g0 = groups * t / nt, g1 = groups * (t + 1) / nt;
    const int64_t ld = masked_dx_stride<T>(K);
    T* acc = DX ? bufs + t * n * ld : nullptr;
    if (DX)
      for (int64_t i = 0; i < n * ld; ++i) acc[i] = T(0);
    // (Blocking the columns so that x and dx stay in L1 measured slower: W is then read in short
    // strided runs.)
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t o0 = g * R;
      if (o0 + R <= M) masked_rows_backward_group<T, R, DX, DW>(dy, x, w, m, acc, dw, ld, o0, n, M, K, 0, K);
      else
        for (int64_t o = o0; o < M; ++o) masked_rows_backward_group<T, 1, DX, DW>(dy, x, w, m, acc, dw, ld, o, n, M, K, 0, K);
    }
    if (DX) {
#pragma omp barrier
      const int64_t b0 = n * t / nt, b1 = n * (t + 1) / nt;  // rows of dx
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t k = 0; k < K; ++k) {
          T s = bufs[b * ld + k];
          for (int64_t u = 1; u < nt; ++u) s += bufs[(u * n + b) * ld + k];
          dx[b * K + k] = s;
        }
    }
  }
}

template <typename T>
void masked_rows_backward(const T* dy, const T* x, const T* w, const bool* m_any, T* dx, T* dw, T* bufs,
                          int max_threads, int64_t n, int64_t M, int64_t K) {
  const unsigned char* m = reinterpret_cast<const unsigned char*>(m_any);
  if (dx != nullptr && dw != nullptr)
    masked_rows_backward_impl<T, true, true>(dy, x, w, m, dx, dw, bufs, max_threads, n, M, K);
  else if (dx != nullptr)
    masked_rows_backward_impl<T, true, false>(dy, x, w, m, dx, dw, bufs, max_threads, n, M, K);
  else if (dw != nullptr)
    masked_rows_backward_impl<T, false, true>(dy, x, w, m, dx, dw, bufs, max_threads, n, M, K);
}

}  // namespace

template <typename T>
void masked_linear_small(const T* x, const T* w, const bool* m, const T* bias, T* y, int64_t n, int64_t M, int64_t K) {
  masked_linear_rows<T>(x, w, m, bias, y, n, M, K);
}

// Elements of the dx buffers masked_backward_small needs for `threads` threads (padded rows).
template <typename T>
int64_t masked_backward_buffer_elems(int64_t threads, int64_t n, int64_t K) {
  return threads * n * masked_dx_stride<T>(K);
}

template <typename T>
void masked_backward_small(const T* dy, const T* x, const T* w, const bool* m, T* dx, T* dw, T* bufs,
                           int max_threads, int64_t n, int64_t M, int64_t K) {
  masked_rows_backward<T>(dy, x, w, m, dx, dw, bufs, max_threads, n, M, K);
}

}  // namespace GRANET_ISA
}  // namespace cpu
}  // namespace granet
