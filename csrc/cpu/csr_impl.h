// CSR kernels, compiled once per ISA by for_each_isa.h (namespace granet::cpu::GRANET_ISA).
// Plain C++ only: see for_each_isa.h.
//
// Dense operands live in batch panels [ceil(N/BT)][features][BT]: a nonzero (i, j) then touches
// one contiguous BT-wide row of the operand, and output tiles stay in registers.

namespace granet {
namespace cpu {
namespace GRANET_ISA {

namespace {

#include "cpu/simd_impl.h"

// In-register transpose of an 8 x 8 tile (r[i] = row i in, r[c] = column c out).
template <typename vec, typename ivec>
inline void transpose8(vec* r) {
  const ivec lo1 = {0, 8, 1, 9, 4, 12, 5, 13}, hi1 = {2, 10, 3, 11, 6, 14, 7, 15};
  const ivec lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
  const ivec lo3 = {0, 1, 2, 3, 8, 9, 10, 11}, hi3 = {4, 5, 6, 7, 12, 13, 14, 15};
  vec t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], lo1);
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], hi1);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = __builtin_shuffle(t[i], t[i + 2], lo2);
    u[i + 1] = __builtin_shuffle(t[i], t[i + 2], hi2);
    u[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], lo2);
    u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], hi2);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = __builtin_shuffle(u[c], u[c + 4], lo3);
    r[c + 4] = __builtin_shuffle(u[c], u[c + 4], hi3);
  }
}

// Whether the 8 x 8 register transposes apply (8-lane vectors: fp32 on AVX2).
template <typename T, int BT>
constexpr bool fast_transpose() {
  return Simd<T>::lanes == 8 && BT % 8 == 0;
}

// x [n][k] (row-major, contiguous) -> panels [ceil(n/BT)][k][BT], zero-filled past n. With `sums`,
// also sums[p * k + j] = the sum of panel p's row j (its batch lanes), taken from L1 right after the
// row block is written: the bias gradient without another pass over dy.
template <typename T, int BT>
void pack_panels(const T* x, T* panels, int64_t n, int64_t k, T* sums = nullptr) {
  using S = Simd<T>;
  using vec = typename S::vec;
  const int64_t n_panels = (n + BT - 1) / BT;
  // Transpose in k-blocks of 512 columns: each x row is read in 2-4 KB runs that the hardware
  // prefetcher follows (64-column blocks read 256 B runs from 32 rows at once: 28% slower from
  // memory, measured on 256 x 4096 fp32), and a block's writes (512 panel rows) stay in L2.
  constexpr int64_t KB = 512;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t p = 0; p < n_panels; ++p) {
    for (int64_t k0 = 0; k0 < k; k0 += KB) {
      const int64_t k1 = min_i64(k0 + KB, k);
      T* dst = panels + p * k * BT;
      int b = 0;
      if constexpr (fast_transpose<T, BT>()) {
        typedef typename IntOf<T>::type ivec __attribute__((vector_size(GRANET_VECTOR_BYTES)));
        const int64_t k8 = k0 + (k1 - k0) / 8 * 8;
        for (; b < BT && p * BT + b + 8 <= n; b += 8) {
          const T* src = x + (p * BT + b) * k;
          for (int64_t j = k0; j < k8; j += 8) {
            vec r[8];
            for (int i = 0; i < 8; ++i) r[i] = S::load(src + i * k + j);
            transpose8<vec, ivec>(r);
            for (int c = 0; c < 8; ++c) S::store(dst + (j + c) * BT + b, r[c]);
          }
          for (int i = 0; i < 8; ++i)
            for (int64_t j = k8; j < k1; ++j) dst[j * BT + b + i] = src[i * k + j];
        }
      }
      for (; b < BT; ++b) {
        const int64_t r = p * BT + b;
        if (r < n) {
          const T* src = x + r * k;
          for (int64_t j = k0; j < k1; ++j) dst[j * BT + b] = src[j];
        } else {
          for (int64_t j = k0; j < k1; ++j) dst[j * BT + b] = T(0);
        }
      }
      if (sums != nullptr) {
        for (int64_t j = k0; j < k1; ++j) {
          vec acc = S::load(dst + j * BT);
          for (int v = 1; v < BT / S::lanes; ++v) acc += S::load(dst + j * BT + v * S::lanes);
          sums[p * k + j] = S::hsum(acc);
        }
      }
    }
  }
}

// panels [ceil(n/BT)][k][BT] -> out [n][k].
template <typename T, int BT>
void unpack_panels(const T* panels, T* out, int64_t n, int64_t k) {
  using S = Simd<T>;
  using vec = typename S::vec;
  const int64_t n_panels = (n + BT - 1) / BT;
  constexpr int64_t KB = 64;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t p = 0; p < n_panels; ++p) {
    for (int64_t k0 = 0; k0 < k; k0 += KB) {
      const int64_t k1 = min_i64(k0 + KB, k);
      const T* src = panels + p * k * BT;
      const int64_t lanes = min_i64(BT, n - p * BT);
      int64_t b = 0;
      if constexpr (fast_transpose<T, BT>()) {
        typedef typename IntOf<T>::type ivec __attribute__((vector_size(GRANET_VECTOR_BYTES)));
        const int64_t k8 = k0 + (k1 - k0) / 8 * 8;
        for (; b + 8 <= lanes; b += 8) {
          T* dst = out + (p * BT + b) * k;
          for (int64_t j = k0; j < k8; j += 8) {
            vec r[8];
            for (int c = 0; c < 8; ++c) r[c] = S::load(src + (j + c) * BT + b);
            transpose8<vec, ivec>(r);
            for (int i = 0; i < 8; ++i) S::store(dst + i * k + j, r[i]);
          }
          for (int i = 0; i < 8; ++i)
            for (int64_t j = k8; j < k1; ++j) dst[i * k + j] = src[j * BT + b + i];
        }
      }
      for (; b < lanes; ++b) {
        T* dst = out + (p * BT + b) * k;
        for (int64_t j = k0; j < k1; ++j) dst[j] = src[j * BT + b];
      }
    }
  }
}

// A tile [rows][BT] of one panel (lane b = batch row p * BT + b) -> out[b * ld + r] for b < lanes:
// kernels write their results straight into the row-major output (no panel buffer, no unpack pass).
template <typename T, int BT>
inline void store_tile(const T* tile, int64_t rows, T* out, int64_t ld, int64_t lanes) {
  int64_t b = 0;
  if constexpr (fast_transpose<T, BT>()) {
    using S = Simd<T>;
    using vec = typename S::vec;
    typedef typename IntOf<T>::type ivec __attribute__((vector_size(GRANET_VECTOR_BYTES)));
    const int64_t rows8 = rows / 8 * 8;
    for (; b + 8 <= lanes; b += 8) {
      for (int64_t r = 0; r < rows8; r += 8) {
        vec v[8];
        for (int c = 0; c < 8; ++c) v[c] = S::load(tile + (r + c) * BT + b);
        transpose8<vec, ivec>(v);
        for (int l = 0; l < 8; ++l) S::store(out + (b + l) * ld + r, v[l]);
      }
      for (int l = 0; l < 8; ++l)
        for (int64_t r = rows8; r < rows; ++r) out[(b + l) * ld + r] = tile[r * BT + b + l];
    }
  }
  for (; b < lanes; ++b)
    for (int64_t r = 0; r < rows; ++r) out[b * ld + r] = tile[r * BT + b];
}

// An index bound for unsigned comparisons: int32 entries read as uint32 are >= 2^31 when negative.
inline uint32_t index_bound(int64_t bound) {
  return static_cast<uint32_t>(bound < 0 ? 0 : bound > (int64_t(1) << 31) ? (int64_t(1) << 31) : bound);
}

// Software prefetch distance (in nonzeros) of the operand rows, and cache lines per panel row.
constexpr int kPrefetchAhead = 16;
template <typename T, int BT>
inline void prefetch_row(const T* r) {
  // A panel row narrower than a line lies inside one line (panels are 64-byte aligned).
  constexpr int lines = (BT * sizeof(T) + 63) / 64;
  for (int l = 0; l < lines; ++l) __builtin_prefetch(r + l * (64 / sizeof(T)));
}

// Independent accumulator sets so that about 8 vectors are in flight (FMA latency x throughput),
// without spilling (16 vector registers on AVX2).
template <int NV>
constexpr int acc_sets() {
  return NV >= 8 ? 1 : NV >= 4 ? 2 : 4;
}

// One task of the forward: rows [i0, i_end) of one x panel, written into y (row-major) through a
// register tile. Operand rows are prefetched kPrefetchAhead slots ahead, across rows and past the
// task's end (the next task's rows: harmless); slots below q_safe = nnz - kPrefetchAhead - U do so
// without a bound check, which keeps the check out of the inner loop (2-4% faster measured).
// With CHECK (the first panel) every column index is range-checked as it is read, before it
// addresses the panel: the first bad one ends the task and returns false.
template <typename T, int BT, bool CHECK>
bool spmm_task(const int32_t* crow, const int32_t* col, const T* values, const T* bias, const T* panel, T* y,
               int64_t i0, int64_t i_end, int64_t m, int64_t k, int64_t lanes) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int NV = BT / S::lanes;
  constexpr int U = acc_sets<NV>();
  constexpr int64_t RB = 64;
  alignas(64) T tile[RB * BT];  // this task's outputs, transposed into y at the end
  const int64_t nnz = crow[m];
  const int64_t q_safe = nnz - kPrefetchAhead - U;
  const uint32_t kb = index_bound(k);
  for (int64_t i = i0; i < i_end; ++i) {
    vec acc[U][NV];
    for (int u = 0; u < U; ++u)
      for (int v = 0; v < NV; ++v) acc[u][v] = vec{};
    int64_t q = crow[i];
    const int64_t q_end = crow[i + 1];
    const int64_t q_fast = min_i64(q_end, q_safe);
    for (; q + U <= q_fast; q += U) {
      for (int u = 0; u < U; ++u) {
        prefetch_row<T, BT>(panel + static_cast<int64_t>(col[q + u + kPrefetchAhead]) * BT);
        const uint32_t c = static_cast<uint32_t>(col[q + u]);
        if (CHECK && c >= kb) return false;
        const vec w = S::splat(values[q + u]);
        const T* r = panel + static_cast<int64_t>(c) * BT;
        for (int v = 0; v < NV; ++v) acc[u][v] = S::fmadd(w, S::load(r + v * S::lanes), acc[u][v]);
      }
    }
    for (; q < q_end; ++q) {
      if (q + kPrefetchAhead < nnz) prefetch_row<T, BT>(panel + static_cast<int64_t>(col[q + kPrefetchAhead]) * BT);
      const uint32_t c = static_cast<uint32_t>(col[q]);
      if (CHECK && c >= kb) return false;
      const vec w = S::splat(values[q]);
      const T* r = panel + static_cast<int64_t>(c) * BT;
      for (int v = 0; v < NV; ++v) acc[0][v] = S::fmadd(w, S::load(r + v * S::lanes), acc[0][v]);
    }
    for (int u = 1; u < U; ++u)
      for (int v = 0; v < NV; ++v) acc[0][v] += acc[u][v];
    if (bias != nullptr)
      for (int v = 0; v < NV; ++v) acc[0][v] += S::splat(bias[i]);
    for (int v = 0; v < NV; ++v) S::store(tile + (i - i0) * BT + v * S::lanes, acc[0][v]);
  }
  store_tile<T, BT>(tile, i_end - i0, y + i0, m, lanes);
  return true;
}

// Forward: y [n][m] (row-major) = sum over row i's nonzeros of values * x panel rows. The x panel
// (k x BT) stays in L2. The first panel also range-checks col (so no separate pass over the index
// is needed); the other panels run only if every entry was in [0, k). Returns whether it was.
// crow must be checked (starts at 0, never decreases, ends at nnz) by the caller.
template <typename T, int BT>
bool csr_spmm_panels(const int32_t* crow, const int32_t* col, const T* values, const T* bias, const T* xp, T* y,
                     int64_t n, int64_t m, int64_t k) {
  const int64_t n_panels = (n + BT - 1) / BT;
  constexpr int64_t RB = 64;  // output rows per task
  const int64_t row_blocks = (m + RB - 1) / RB;
  uint32_t bad = 0;
  if (n_panels == 0) {  // nothing to compute, but the index is still checked
    const uint32_t kb = index_bound(k);
    for (int64_t q = 0; q < crow[m]; ++q) bad |= static_cast<uint32_t>(static_cast<uint32_t>(col[q]) >= kb);
    return bad == 0;
  }
#pragma omp parallel for schedule(dynamic, 1) reduction(| : bad)
  for (int64_t rb = 0; rb < row_blocks; ++rb)
    bad |= spmm_task<T, BT, true>(crow, col, values, bias, xp, y, rb * RB, min_i64((rb + 1) * RB, m), m, k,
                                  min_i64(BT, n))
               ? 0u
               : 1u;
  if (bad != 0) return false;
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int64_t p = 1; p < n_panels; ++p)
    for (int64_t rb = 0; rb < row_blocks; ++rb)
      spmm_task<T, BT, false>(crow, col, values, bias, xp + p * k * BT, y + p * BT * m, rb * RB,
                              min_i64((rb + 1) * RB, m), m, k, min_i64(BT, n - p * BT));
  return true;
}

// Forward of a single input row (batch 1, inference): y[i] = bias[i] + sum of values * x[col]. x is
// read in place (no panel: k floats stay in L1 up to k = 8192 fp32): 1.6-1.7x faster than the
// narrowest panel at batch 1 (W 1024^2 and 4096^2, d = 0.05 and 0.2, Zen 3). The sums run in the
// order of spmm_task at batch 1 with the panel width the training forward uses (U chains over groups
// of U slots below q_safe, the rest on the first chain, then chains added in order, then the bias),
// so training and inference forwards of one row give the same bits. Every column index is
// range-checked before it addresses x.
template <typename T, int U>
bool csr_spmv(const int32_t* crow, const int32_t* col, const T* values, const T* bias, const T* x, T* y, int64_t m,
              int64_t k) {
  const uint32_t kb = index_bound(k);
  const int64_t q_safe = static_cast<int64_t>(crow[m]) - kPrefetchAhead - U;
  uint32_t bad = 0;
#pragma omp parallel for schedule(dynamic, 256) reduction(| : bad)
  for (int64_t i = 0; i < m; ++i) {
    T acc[U];
    for (int u = 0; u < U; ++u) acc[u] = T(0);
    int64_t q = crow[i];
    const int64_t q_end = crow[i + 1];
    const int64_t q_fast = min_i64(q_end, q_safe);
    bool ok = true;
    for (; q + U <= q_fast; q += U) {
      uint32_t c[U];
      uint32_t outside = 0;
      for (int u = 0; u < U; ++u) {
        c[u] = static_cast<uint32_t>(col[q + u]);
        outside |= static_cast<uint32_t>(c[u] >= kb);
      }
      if (outside != 0) {
        ok = false;
        break;
      }
      for (int u = 0; u < U; ++u) acc[u] = fmadd(values[q + u], x[c[u]], acc[u]);
    }
    for (; ok && q < q_end; ++q) {
      const uint32_t c = static_cast<uint32_t>(col[q]);
      if (c >= kb) {
        ok = false;
        break;
      }
      acc[0] = fmadd(values[q], x[c], acc[0]);
    }
    bad |= ok ? 0u : 1u;
    for (int u = 1; u < U; ++u) acc[0] += acc[u];
    if (bias != nullptr) acc[0] += bias[i];
    y[i] = acc[0];
  }
  return bad == 0;
}

// Sum of the products d[v] * x[v] as one vector (two chains, no zero initialisation).
template <typename vec, int NV>
inline vec dot_lanes(const vec* d, const vec* x) {
  vec d0 = d[0] * x[0];
  if constexpr (NV == 1) {
    return d0;
  } else {
    vec d1 = d[1] * x[1];
    for (int v = 2; v < NV; v += 2) {
      d0 += d[v] * x[v];
      if (v + 1 < NV) d1 += d[v + 1] * x[v + 1];
    }
    return d0 + d1;
  }
}

// out[u] (= or +=) the lane sum of t[u], u < 4. With 8-lane vectors the four sums come out of the
// reduction tree as one 4-lane vector: one vector load/add/store instead of four scalar ones.
template <typename T>
inline void add_hsum4(const typename Simd<T>::vec* t, T* out, bool assign) {
  if constexpr (Simd<T>::lanes == 8) {
    typedef typename IntOf<T>::type ivec __attribute__((vector_size(GRANET_VECTOR_BYTES)));
    typedef T half __attribute__((vector_size(GRANET_VECTOR_BYTES / 2)));
    const ivec even = {0, 8, 2, 10, 4, 12, 6, 14}, odd = {1, 9, 3, 11, 5, 13, 7, 15};
    const auto u0 = __builtin_shuffle(t[0], t[1], even) + __builtin_shuffle(t[0], t[1], odd);
    const auto u1 = __builtin_shuffle(t[2], t[3], even) + __builtin_shuffle(t[2], t[3], odd);
    const ivec lo = {0, 1, 8, 9, 4, 5, 12, 13}, hi = {2, 3, 10, 11, 6, 7, 14, 15};
    const auto v = __builtin_shuffle(u0, u1, lo) + __builtin_shuffle(u0, u1, hi);
    half a, b, o;
    __builtin_memcpy(&a, &v, sizeof(half));
    __builtin_memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof(half), sizeof(half));
    a += b;
    if (!assign) {
      __builtin_memcpy(&o, out, sizeof(half));
      a += o;
    }
    __builtin_memcpy(out, &a, sizeof(half));
  } else {
    T sums[4];
    hsum4<T>(t[0], t[1], t[2], t[3], sums);
    for (int u = 0; u < 4; ++u) out[u] = assign ? sums[u] : out[u] + sums[u];
  }
}

// <d, x> over NV vectors as one vector. Up to four vectors: one mul + FMA chain (fewest
// instructions; the slots' chains are independent, so their latency overlaps). Longer: two chains.
template <typename vec, int NV>
inline vec dot_chain(const vec* d, const vec* x) {
  if constexpr (NV > 4) {
    return dot_lanes<vec, NV>(d, x);
  } else {
    vec a = d[0] * x[0];
    for (int v = 1; v < NV; ++v) a += d[v] * x[v];
    return a;
  }
}

// fp32 dot products of a group of eight slots reduce to eight sums in one 8-lane vector with a
// vhaddps tree (7 hadds, 2 lane permutes, 1 add), folded in as the slots complete so that few
// vectors stay live. Measured 9-13% faster than groups of four with add_hsum4 (AVX2, Zen 3). The
// AVX-512 copies first add the two halves of each 16-lane dot vector (fold8) and share the tree.
typedef float f32x8 __attribute__((vector_size(32)));
#if GRANET_VECTOR_BYTES >= 32
constexpr bool kDotGroupsOf8 = true;
inline f32x8 hadd8(f32x8 a, f32x8 b) { return __builtin_ia32_haddps256(a, b); }
// An 8-lane vector with v's lane sum.
template <typename vec>
inline f32x8 fold8(vec v) {
  if constexpr (sizeof(vec) == sizeof(f32x8)) {
    return v;
  } else {
    static_assert(sizeof(vec) == 2 * sizeof(f32x8));
    f32x8 a, b;
    __builtin_memcpy(&a, &v, sizeof(a));
    __builtin_memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof(a), sizeof(b));
    return a + b;
  }
}
// h[q] = hadd(dot[2q], dot[2q+1]); out[0..8) (= or +=) the eight lane sums, in slot order.
inline void add_hsum8(const f32x8* h, float* out, bool assign) {
  const f32x8 t0 = hadd8(h[0], h[1]), t1 = hadd8(h[2], h[3]);
  f32x8 r = __builtin_ia32_vperm2f128_ps256(t0, t1, 0x20) + __builtin_ia32_vperm2f128_ps256(t0, t1, 0x31);
  if (!assign) {
    f32x8 o;
    __builtin_memcpy(&o, out, sizeof(o));
    r += o;
  }
  __builtin_memcpy(out, &r, sizeof(r));
}
#else
constexpr bool kDotGroupsOf8 = false;
#endif

// The type a group's dot products are kept in: 8-lane fp32 vectors for groups of eight.
template <typename T, bool GROUP8>
using DotVec = std::conditional_t<GROUP8, f32x8, typename Simd<T>::vec>;

// dot[u] = the dot vector of slot u of a group, folding pairs as they complete in groups of eight.
template <typename T, bool GROUP8>
inline void put_dot(DotVec<T, GROUP8>* dot, int u, typename Simd<T>::vec v) {
#if GRANET_VECTOR_BYTES >= 32
  if constexpr (GROUP8) {
    dot[u] = fold8(v);
    if (u & 1) dot[u - 1] = hadd8(dot[u - 1], dot[u]);
    return;
  } else
#endif
  {
    dot[u] = v;
  }
}

// Thread t's share [first, last) of the `count` rows (or columns) of a compressed index ptr, when
// the cost ptr[r] + r (slots plus per-row work) is split evenly among nt threads.
struct Share {
  int64_t first, last;
};
inline Share balanced_share(const int32_t* ptr, int64_t count, int64_t t, int64_t nt) {
  const int64_t total = static_cast<int64_t>(ptr[count]) + count;
  auto boundary = [&](int64_t part) {  // first r with ptr[r] + r >= total * part / nt
    const int64_t target = total * part / nt;
    int64_t lo = 0, hi = count;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (static_cast<int64_t>(ptr[mid]) + mid < target) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  return {boundary(t), t + 1 == nt ? count : boundary(t + 1)};
}

// The calling thread's team (nt threads, this one t) and its balanced share [first, last) of the
// `count` rows (or columns) of a compressed index ptr.
struct ThreadShare {
  int64_t nt, t, first, last;
};
inline ThreadShare share_of_this_thread(const int32_t* ptr, int64_t count) {
  const Team team = this_team();
  const Share share = balanced_share(ptr, count, team.id, team.size);
  return {team.size, team.id, share.first, share.last};
}

// out[0..G) (= or +=) the lane sums of a group's dot vectors: in groups of eight (fp32 with AVX2 or
// AVX-512), dot[0, 2, 4, 6] already hold pairs folded by put_dot as the slots completed.
template <typename T, bool GROUP8>
inline void add_group_sums(const DotVec<T, GROUP8>* dot, T* out, bool assign) {
#if GRANET_VECTOR_BYTES >= 32
  if constexpr (GROUP8) {
    const f32x8 h[4] = {dot[0], dot[2], dot[4], dot[6]};
    add_hsum8(h, out, assign);
    return;
  } else
#endif
  {
    add_hsum4<T>(dot, out, assign);
  }
}

// Backward in CSC order, fused: walking W by columns j, x's panel row j and the dx accumulator stay
// in registers; each nonzero (i, j) loads dy's panel row i once and uses it twice:
//   dx[:, j] += w(i, j) * dy[:, i]      (if DX)
//   dw(i, j) += <dy[:, i], x[:, j]>     (if DW; summed over the panels)
// No stores in the inner loop, no atomics, no barriers: each thread owns one column range (balanced
// by nonzeros) for all panels. The row indices are range-checked in the first panel as they are
// read (returns false on a bad one; the caller raises), so no separate pass over the index runs. Panels are the outer loop so that one dy panel (m x BT, random rows,
// prefetched kPrefetchAhead slots ahead) stays in L2 while the index streams; the first panel writes
// dw, the others add. Slots go in groups (8 for fp32 on AVX2, else 4) whose dot products share one
// horizontal reduction. The loop is bound by instruction count (about 24 per slot on AVX2, with dy
// in L1 it runs only 25% faster): 64-bit slot counters (no re-extension per access) and single
// mul + FMA dot chains keep it short.
// w_csc / dw_csc are in CSC slot order; dx_out is [n][k] row-major.
template <typename T, int BT, bool DX, bool DW>
bool csc_backward_panels(const int32_t* ccol, const int32_t* row, const T* w_csc, const T* dyp, const T* xp, T* dx_out,
                         T* dw_csc, int64_t n, int64_t m, int64_t k) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int NV = BT / S::lanes;
  constexpr int DXS = NV >= 4 ? 1 : 2;  // dx accumulator sets (with NV >= 4 the FMAs per slot hide the latency)
  constexpr bool kGroup8 = DW && kDotGroupsOf8 && sizeof(T) == 4;
  constexpr int G = kGroup8 ? 8 : 4;
  const int64_t n_panels = (n + BT - 1) / BT;
  if (k == 0) return true;  // no columns, no slots
  uint32_t bad = 0;
#pragma omp parallel reduction(| : bad)
  {
    const ThreadShare share = share_of_this_thread(ccol, k);  // columns [j0, j1)
    const int64_t j0 = share.first, j1 = share.last;
    const int64_t s_limit = ccol[j1];
    const uint32_t mb = index_bound(m);
    if (n_panels == 0)  // no batch rows: the gradient is zero (and the index is still checked)
      for (int64_t s = ccol[j0]; s < s_limit; ++s) {
        if (DW) dw_csc[s] = T(0);
        bad |= static_cast<uint32_t>(static_cast<uint32_t>(row[s]) >= mb);
      }
    constexpr int64_t kTileRows = 64;
    alignas(64) T tile[kTileRows * BT];  // dx of up to 64 columns, transposed into dx_out
    // One panel over this thread's columns. FIRST (panel 0) writes dw instead of adding to it, and
    // range-checks every row index as it reads it, before it addresses dy: the first bad one ends
    // the pass with false. This thread's later panels read only the slots it checked.
    auto panel_pass = [&]<bool FIRST>(int64_t p) -> bool {
      const T* dy_panel = dyp + p * m * BT;
      const T* x_panel = xp + p * k * BT;
      const int64_t lanes = min_i64(BT, n - p * BT);
      int64_t jt = j0;  // first column of the tile
      for (int64_t j = j0; j < j1; ++j) {
        vec xj[NV], dx[DXS][NV];
        for (int v = 0; v < NV; ++v) {
          if (DW) xj[v] = S::load(x_panel + j * BT + v * S::lanes);
          for (int u = 0; u < DXS; ++u) dx[u][v] = vec{};
        }
        int64_t s = ccol[j];
        const int64_t s_end = ccol[j + 1];
        for (; s + G - 1 < s_end; s += G) {
          if (s + G - 1 + kPrefetchAhead < s_limit)  // one check per group
            for (int u = 0; u < G; ++u)
              prefetch_row<T, BT>(dy_panel + static_cast<int64_t>(row[s + u + kPrefetchAhead]) * BT);
          DotVec<T, kGroup8> dot[G];
          for (int u = 0; u < G; ++u) {
            const uint32_t r = static_cast<uint32_t>(row[s + u]);
            if (FIRST && r >= mb) return false;
            const T* dyi = dy_panel + static_cast<int64_t>(r) * BT;
            vec d[NV];
            for (int v = 0; v < NV; ++v) d[v] = S::load(dyi + v * S::lanes);
            if (DX) {
              const vec w = S::splat(w_csc[s + u]);
              for (int v = 0; v < NV; ++v) dx[u % DXS][v] += w * d[v];
            }
            if (DW) put_dot<T, kGroup8>(dot, u, dot_chain<vec, NV>(d, xj));
          }
          if constexpr (DW) add_group_sums<T, kGroup8>(dot, dw_csc + s, FIRST);
        }
        for (; s < s_end; ++s) {
          const uint32_t r = static_cast<uint32_t>(row[s]);
          if (FIRST && r >= mb) return false;
          const T* dyi = dy_panel + static_cast<int64_t>(r) * BT;
          const vec w = S::splat(DX ? w_csc[s] : T(0));
          vec dot = vec{};
          for (int v = 0; v < NV; ++v) {
            const vec d = S::load(dyi + v * S::lanes);
            if (DX) dx[0][v] += w * d;
            if (DW) dot += d * xj[v];
          }
          if (DW) {
            const T h = S::hsum(dot);
            dw_csc[s] = FIRST ? h : dw_csc[s] + h;
          }
        }
        if (DX) {
          for (int u = 1; u < DXS; ++u)
            for (int v = 0; v < NV; ++v) dx[0][v] += dx[u][v];
          for (int v = 0; v < NV; ++v) S::store(tile + (j - jt) * BT + v * S::lanes, dx[0][v]);
          if (j + 1 - jt == kTileRows || j + 1 == j1) {
            store_tile<T, BT>(tile, j + 1 - jt, dx_out + p * BT * k + jt, k, lanes);
            jt = j + 1;
          }
        }
      }
      return true;
    };
    if (n_panels > 0 && !panel_pass.template operator()<true>(0)) bad = 1;
    for (int64_t p = 1; p < n_panels && bad == 0; ++p) panel_pass.template operator()<false>(p);
  }
  return bad == 0;
}

// values in CSC slot order: w_csc[s] = values[perm[s]]. The reads jump between rows: prefetched
// kGatherAhead slots ahead (3x faster measured at d = 0.1). This pass is also perm's range check
// (a separate pass over the index cost ~1.5% of a training step): an entry outside [0, nnz) reads
// entry 0 instead and makes the result false, and the caller then raises.
constexpr int64_t kGatherAhead = 64;
template <typename T>
bool gather(const T* values, const int32_t* perm, T* out, int64_t nnz) {
  const uint32_t bound = static_cast<uint32_t>(nnz);
  uint32_t bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
  for (int64_t s = 0; s < nnz; ++s) {
    if (s + kGatherAhead < nnz) __builtin_prefetch(values + perm[s + kGatherAhead]);
    const uint32_t q = static_cast<uint32_t>(perm[s]);
    const bool outside = q >= bound;
    bad |= static_cast<uint32_t>(outside);
    out[s] = values[outside ? 0 : q];
  }
  return bad == 0;
}

// dvalues[perm[s]] = dw_csc[s], the targets prefetched for writing.
template <typename T>
void scatter(const T* dw_csc, const int32_t* perm, T* out, int64_t nnz) {
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < nnz; ++s) {
    if (s + kGatherAhead < nnz) __builtin_prefetch(out + perm[s + kGatherAhead], 1);
    out[perm[s]] = dw_csc[s];
  }
}

// Backward in CSR order, fused, for small batches (one or two panels): walking W by rows i, dy's
// panel row i stays in registers; each nonzero (i, j) loads x's panel row j and the dx accumulator
// row j of a [k][BT] buffer (L2-resident for the batches this runs at):
//   dw(i, j) += <dy[:, i], x[:, j]>     (written in the values' own, CSR, order)
//   dx[:, j] += w(i, j) * dy[:, i]      (read-modify-write of the buffer row)
// Against the CSC backward it needs no value gather into CSC order, no dW scatter back and no
// zeroing of dW: per-nonzero passes that cost more than the products themselves when the batch
// fills only one panel. Threads take row ranges (balanced by nonzeros) and their own dx buffer
// (dx_bufs: threads x k x BT), summed into dx_out after each panel. The first panel range-checks
// col as it reads it (false: a bad entry; the caller raises). crow must be checked by the caller.
template <typename T, int BT>
bool csr_backward_rows(const int32_t* crow, const int32_t* col, const T* values, const T* dyp, const T* xp, T* dx_out,
                       T* dw, T* dx_bufs, int max_threads, int64_t n, int64_t m, int64_t k) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int NV = BT / S::lanes;
  constexpr bool kGroup8 = kDotGroupsOf8 && sizeof(T) == 4;
  constexpr int G = kGroup8 ? 8 : 4;
  const int64_t n_panels = (n + BT - 1) / BT;
  const int64_t nnz = crow[m];
  const uint32_t kb = index_bound(k);
  if (n_panels == 0) {  // no batch rows: dW is zero, dx empty (and the index is still checked)
    uint32_t bad = 0;
    for (int64_t q = 0; q < nnz; ++q) {
      dw[q] = T(0);
      bad |= static_cast<uint32_t>(static_cast<uint32_t>(col[q]) >= kb);
    }
    return bad == 0;
  }
  int bad_flag = 0;
#pragma omp parallel num_threads(max_threads)
  {
    const ThreadShare share = share_of_this_thread(crow, m);  // rows [i0, i1)
    const int64_t nt = share.nt, t = share.t, i0 = share.first, i1 = share.last;
    T* buf = dx_bufs + t * k * BT;
    // Columns [c0, c1) of the dx sum after each panel.
    const int64_t c0 = k * t / nt, c1 = k * (t + 1) / nt;
    auto rows_pass = [&]<bool FIRST>(int64_t p) -> bool {
      // Locals, not the captured references: the vector stores (memcpy) may alias anything, and the
      // compiler would reload every captured variable after each one.
      const int32_t* const crow_l = crow;
      const int32_t* const col_l = col;
      const T* const values_l = values;
      T* const dw_l = dw;
      T* const buf_l = buf;
      const uint32_t kb_l = kb;
      const int64_t nnz_l = nnz, row_end = i1;
      const T* dy_panel = dyp + p * m * BT;
      const T* x_panel = xp + p * k * BT;
      for (int64_t e = 0; e < k * BT; e += S::lanes) S::store(buf_l + e, vec{});
      for (int64_t i = i0; i < row_end; ++i) {
        vec d[NV];
        for (int v = 0; v < NV; ++v) d[v] = S::load(dy_panel + i * BT + v * S::lanes);
        int64_t q = crow_l[i];
        const int64_t q_end = crow_l[i + 1];
        for (; q + G <= q_end; q += G) {
          if (q + G - 1 + kPrefetchAhead < nnz_l)
            for (int u = 0; u < G; ++u) {
              const int64_t c = static_cast<uint32_t>(col_l[q + u + kPrefetchAhead]);
              prefetch_row<T, BT>(x_panel + c * BT);
              prefetch_row<T, BT>(buf_l + c * BT);
            }
          DotVec<T, kGroup8> dot[G];
          for (int u = 0; u < G; ++u) {
            const uint32_t c = static_cast<uint32_t>(col_l[q + u]);
            if (FIRST && c >= kb_l) return false;
            const T* xr = x_panel + static_cast<int64_t>(c) * BT;
            T* br = buf_l + static_cast<int64_t>(c) * BT;
            vec xv[NV];
            for (int v = 0; v < NV; ++v) xv[v] = S::load(xr + v * S::lanes);
            const vec w = S::splat(values_l[q + u]);
            for (int v = 0; v < NV; ++v) S::store(br + v * S::lanes, S::load(br + v * S::lanes) + w * d[v]);
            put_dot<T, kGroup8>(dot, u, dot_chain<vec, NV>(d, xv));
          }
          add_group_sums<T, kGroup8>(dot, dw_l + q, FIRST);
        }
        for (; q < q_end; ++q) {
          const uint32_t c = static_cast<uint32_t>(col_l[q]);
          if (FIRST && c >= kb_l) return false;
          const T* xr = x_panel + static_cast<int64_t>(c) * BT;
          T* br = buf_l + static_cast<int64_t>(c) * BT;
          const vec w = S::splat(values_l[q]);
          vec dot = vec{};
          for (int v = 0; v < NV; ++v) {
            S::store(br + v * S::lanes, S::load(br + v * S::lanes) + w * d[v]);
            dot += d[v] * S::load(xr + v * S::lanes);
          }
          const T h = S::hsum(dot);
          dw_l[q] = FIRST ? h : dw_l[q] + h;
        }
      }
      return true;
    };
    // Sums the threads' buffers over this thread's columns into dx_out (panel p's batch rows).
    auto sum_pass = [&](int64_t p) {
      constexpr int64_t kTileRows = 64;
      alignas(64) T tile[kTileRows * BT];
      const int64_t lanes = min_i64(BT, n - p * BT);
      for (int64_t j0 = c0; j0 < c1; j0 += kTileRows) {
        const int64_t rows = min_i64(kTileRows, c1 - j0);
        for (int64_t j = 0; j < rows; ++j)
          for (int v = 0; v < NV; ++v) {
            vec a = S::load(dx_bufs + (j0 + j) * BT + v * S::lanes);
            for (int64_t u = 1; u < nt; ++u) a += S::load(dx_bufs + (u * k + j0 + j) * BT + v * S::lanes);
            S::store(tile + j * BT + v * S::lanes, a);
          }
        store_tile<T, BT>(tile, rows, dx_out + p * BT * k + j0, k, lanes);
      }
    };
    for (int64_t p = 0; p < n_panels; ++p) {
      const bool ok = p == 0 ? rows_pass.template operator()<true>(p) : rows_pass.template operator()<false>(p);
      if (!ok) {
#pragma omp atomic write
        bad_flag = 1;
      }
#pragma omp barrier
      int stop;
#pragma omp atomic read
      stop = bad_flag;
      if (stop != 0) break;  // the same for every thread: read after the barrier, written before it
      sum_pass(p);
#pragma omp barrier
    }
  }
  return bad_flag == 0;
}

// The CSR-order backward of a single batch row: x, dy and dx as plain vectors (no panels), so that
// x and each thread's dx accumulator (k values each) stay in L1 where the one-panel kernel's 8-lane
// rows (32 bytes per column) live in L2:
//   dw[q] = dy[i] * x[col(q)],   dx[col(q)] += w[q] * dy[i].
// Threads take row ranges and their own dx buffer (dx_bufs: threads x k), summed into dx at the end.
// col is range-checked as it is read (false: a bad entry). crow must be checked by the caller.
template <typename T>
bool csr_backward_one_row(const int32_t* crow, const int32_t* col, const T* values, const T* dy, const T* x, T* dx,
                          T* dw, T* dx_bufs, int max_threads, int64_t m, int64_t k) {
  const uint32_t kb = index_bound(k);
  int bad_flag = 0;
#pragma omp parallel num_threads(max_threads)
  {
    const ThreadShare share = share_of_this_thread(crow, m);  // rows [i0, i1)
    const int64_t nt = share.nt, t = share.t, i0 = share.first, i1 = share.last;
    T* const buf = dx_bufs + t * k;
    for (int64_t j = 0; j < k; ++j) buf[j] = T(0);
    bool ok = true;
    for (int64_t i = i0; ok && i < i1; ++i) {
      const T d = dy[i];
      for (int64_t q = crow[i]; q < crow[i + 1]; ++q) {
        const uint32_t c = static_cast<uint32_t>(col[q]);
        if (c >= kb) {
          ok = false;
          break;
        }
        dw[q] = d * x[c];
        buf[c] += values[q] * d;
      }
    }
    if (!ok) {
#pragma omp atomic write
      bad_flag = 1;
    }
#pragma omp barrier
    const int64_t c0 = k * t / nt, c1 = k * (t + 1) / nt;
    for (int64_t j = c0; j < c1; ++j) {
      T a = dx_bufs[j];
      for (int64_t u = 1; u < nt; ++u) a += dx_bufs[u * k + j];
      dx[j] = a;
    }
  }
  return bad_flag == 0;
}

// SDDMM in CSR order: dw[q] = <dy[:, i], x[:, col(q)]> for the nonzeros q of row i (the weight
// gradient alone: a layer whose input needs no gradient, e.g. a model's first). Laid out like the
// backward kernels: threads take row ranges balanced by nonzeros; panels are the outer loop so that
// one x panel (k x BT, rows read at random, prefetched kPrefetchAhead slots ahead) stays in L2 while
// the index streams; slots go in groups whose dot products share one horizontal reduction; the first
// panel writes dw, the others add. No stores but dw's, so every dw[q] is summed in the same order
// whatever the thread count. col must be range-checked by the caller.
template <typename T, int BT>
void csr_sddmm_panels(const int32_t* crow, const int32_t* col, const T* dyp, const T* xp, T* dw, int64_t n,
                      int64_t m, int64_t k) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int NV = BT / S::lanes;
  constexpr bool kGroup8 = kDotGroupsOf8 && sizeof(T) == 4;
  constexpr int G = kGroup8 ? 8 : 4;
  const int64_t n_panels = (n + BT - 1) / BT;
  if (n_panels == 0) {  // no batch rows: the gradient is zero
    for (int64_t q = 0; q < crow[m]; ++q) dw[q] = T(0);
    return;
  }
#pragma omp parallel
  {
    const ThreadShare share = share_of_this_thread(crow, m);  // rows [i0, i1)
    const int64_t i0 = share.first, i1 = share.last;
    const int64_t q_limit = crow[i1];
    auto panel_pass = [&]<bool FIRST>(int64_t p) {
      const T* dy_panel = dyp + p * m * BT;
      const T* x_panel = xp + p * k * BT;
      for (int64_t i = i0; i < i1; ++i) {
        vec d[NV];
        for (int v = 0; v < NV; ++v) d[v] = S::load(dy_panel + i * BT + v * S::lanes);
        int64_t q = crow[i];
        const int64_t q_end = crow[i + 1];
        for (; q + G <= q_end; q += G) {
          if (q + G - 1 + kPrefetchAhead < q_limit)
            for (int u = 0; u < G; ++u)
              prefetch_row<T, BT>(x_panel + static_cast<int64_t>(col[q + u + kPrefetchAhead]) * BT);
          DotVec<T, kGroup8> dot[G];
          for (int u = 0; u < G; ++u) {
            const T* xr = x_panel + static_cast<int64_t>(col[q + u]) * BT;
            vec xv[NV];
            for (int v = 0; v < NV; ++v) xv[v] = S::load(xr + v * S::lanes);
            put_dot<T, kGroup8>(dot, u, dot_chain<vec, NV>(d, xv));
          }
          add_group_sums<T, kGroup8>(dot, dw + q, FIRST);
        }
        for (; q < q_end; ++q) {
          const T* xr = x_panel + static_cast<int64_t>(col[q]) * BT;
          vec dot = vec{};
          for (int v = 0; v < NV; ++v) dot += d[v] * S::load(xr + v * S::lanes);
          const T h = S::hsum(dot);
          dw[q] = FIRST ? h : dw[q] + h;
        }
      }
    };
    panel_pass.template operator()<true>(0);
    for (int64_t p = 1; p < n_panels; ++p) panel_pass.template operator()<false>(p);
  }
}

}  // namespace

// Entry points. The panel width `panel_bytes` is 32, 64 or 128 (chosen by the caller from the batch
// size): wider panels read the index and values fewer times (once per panel), narrower ones waste
// no lanes on small batches. 32-byte panels exist only where a vector is at most 32 bytes wide.
#if GRANET_VECTOR_BYTES <= 32
#define GRANET_CSR_PANEL_32(call)                    \
  if (panel_bytes == 32) {                           \
    constexpr int BT = 32 / sizeof(T);               \
    call;                                            \
  } else
#else
#define GRANET_CSR_PANEL_32(call)
#endif
#define GRANET_CSR_PANEL_DISPATCH(call)              \
  GRANET_CSR_PANEL_32(call)                          \
  if (panel_bytes == 128) {                          \
    constexpr int BT = 128 / sizeof(T);              \
    call;                                            \
  } else {                                           \
    constexpr int BT = 64 / sizeof(T);               \
    call;                                            \
  }

template <typename T>
inline void pack(const T* x, T* panels, int64_t n, int64_t k, int panel_bytes, T* sums = nullptr) {
  GRANET_CSR_PANEL_DISPATCH((pack_panels<T, BT>(x, panels, n, k, sums)))
}
template <typename T>
inline void unpack(const T* panels, T* out, int64_t n, int64_t k, int panel_bytes) {
  GRANET_CSR_PANEL_DISPATCH((unpack_panels<T, BT>(panels, out, n, k)))
}
template <typename T>
inline bool spmm(const int32_t* crow, const int32_t* col, const T* values, const T* bias, const T* xp, T* y, int64_t n,
                 int64_t m, int64_t k, int panel_bytes) {
#if GRANET_VECTOR_BYTES <= 32
  if (panel_bytes == 32) return csr_spmm_panels<T, 32 / sizeof(T)>(crow, col, values, bias, xp, y, n, m, k);
#endif
  if (panel_bytes == 128) return csr_spmm_panels<T, 128 / sizeof(T)>(crow, col, values, bias, xp, y, n, m, k);
  return csr_spmm_panels<T, 64 / sizeof(T)>(crow, col, values, bias, xp, y, n, m, k);
}
template <typename T, bool DX, bool DW>
inline bool backward_panels(const int32_t* ccol, const int32_t* row, const T* w_csc, const T* dyp, const T* xp, T* dx,
                            T* dw_csc, int64_t n, int64_t m, int64_t k, int panel_bytes) {
#if GRANET_VECTOR_BYTES <= 32
  if (panel_bytes == 32)
    return csc_backward_panels<T, 32 / sizeof(T), DX, DW>(ccol, row, w_csc, dyp, xp, dx, dw_csc, n, m, k);
#endif
  if (panel_bytes == 128)
    return csc_backward_panels<T, 128 / sizeof(T), DX, DW>(ccol, row, w_csc, dyp, xp, dx, dw_csc, n, m, k);
  return csc_backward_panels<T, 64 / sizeof(T), DX, DW>(ccol, row, w_csc, dyp, xp, dx, dw_csc, n, m, k);
}
// Returns whether every row index was in [0, m) (the kernel checks them as it reads them).
template <typename T>
inline bool backward(const int32_t* ccol, const int32_t* row, const T* w_csc, const T* dyp, const T* xp, T* dx,
                     T* dw_csc, int64_t n, int64_t m, int64_t k, bool need_dx, bool need_dw, int panel_bytes) {
  if (need_dx && need_dw) return backward_panels<T, true, true>(ccol, row, w_csc, dyp, xp, dx, dw_csc, n, m, k, panel_bytes);
  if (need_dx) return backward_panels<T, true, false>(ccol, row, w_csc, dyp, xp, dx, dw_csc, n, m, k, panel_bytes);
  return backward_panels<T, false, true>(ccol, row, w_csc, dyp, xp, dx, dw_csc, n, m, k, panel_bytes);
}
// panel_bytes: the width the training forward packs one row into (its chain count is copied).
template <typename T>
inline bool spmv(const int32_t* crow, const int32_t* col, const T* values, const T* bias, const T* x, T* y, int64_t m,
                 int64_t k, int panel_bytes) {
  constexpr int L = Simd<T>::lanes;
#if GRANET_VECTOR_BYTES <= 32
  if (panel_bytes == 32) return csr_spmv<T, acc_sets<32 / sizeof(T) / L>()>(crow, col, values, bias, x, y, m, k);
#endif
  if (panel_bytes == 128) return csr_spmv<T, acc_sets<128 / sizeof(T) / L>()>(crow, col, values, bias, x, y, m, k);
  return csr_spmv<T, acc_sets<64 / sizeof(T) / L>()>(crow, col, values, bias, x, y, m, k);
}
template <typename T>
inline bool backward_one_row(const int32_t* crow, const int32_t* col, const T* values, const T* dy, const T* x, T* dx,
                             T* dw, T* dx_bufs, int max_threads, int64_t m, int64_t k) {
  return csr_backward_one_row<T>(crow, col, values, dy, x, dx, dw, dx_bufs, max_threads, m, k);
}
// dx_bufs: max_threads * k * (panel width) elements.
template <typename T>
inline bool backward_rows(const int32_t* crow, const int32_t* col, const T* values, const T* dyp, const T* xp, T* dx,
                          T* dw, T* dx_bufs, int max_threads, int64_t n, int64_t m, int64_t k, int panel_bytes) {
#if GRANET_VECTOR_BYTES <= 32
  if (panel_bytes == 32)
    return csr_backward_rows<T, 32 / sizeof(T)>(crow, col, values, dyp, xp, dx, dw, dx_bufs, max_threads, n, m, k);
#endif
  if (panel_bytes == 128)
    return csr_backward_rows<T, 128 / sizeof(T)>(crow, col, values, dyp, xp, dx, dw, dx_bufs, max_threads, n, m, k);
  return csr_backward_rows<T, 64 / sizeof(T)>(crow, col, values, dyp, xp, dx, dw, dx_bufs, max_threads, n, m, k);
}
template <typename T>
inline bool gather_values(const T* values, const int32_t* perm, T* out, int64_t nnz) {
  return gather<T>(values, perm, out, nnz);
}
template <typename T>
inline void scatter_values(const T* dw_csc, const int32_t* perm, T* out, int64_t nnz) {
  scatter<T>(dw_csc, perm, out, nnz);
}
template <typename T>
inline void sddmm(const int32_t* crow, const int32_t* col, const T* dyp, const T* xp, T* dw, int64_t n, int64_t m,
                  int64_t k, int panel_bytes) {
  GRANET_CSR_PANEL_DISPATCH((csr_sddmm_panels<T, BT>(crow, col, dyp, xp, dw, n, m, k)))
}

// Branch-free index scans (vectorised under each ISA's target): whether any entry is >= bound as an
// unsigned number (so negative entries count), and whether a pointer array ever decreases.
inline bool any_at_least(const uint32_t* p, int64_t n, uint32_t bound) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint32_t>(p[i] >= bound);
  return bad != 0;
}
inline bool any_decrease(const int32_t* c, int64_t n) {
  uint32_t bad = 0;
  for (int64_t i = 0; i + 1 < n; ++i) bad |= static_cast<uint32_t>(c[i] > c[i + 1]);
  return bad != 0;
}

#undef GRANET_CSR_PANEL_DISPATCH
#undef GRANET_CSR_PANEL_32

}  // namespace GRANET_ISA
}  // namespace cpu
}  // namespace granet
