// BSR kernels (square blocks bs x bs, any bs >= 1), compiled once per ISA by for_each_isa.h
// (namespace granet::cpu::GRANET_ISA). Plain C++ only: see for_each_isa.h.
//
// W [M, K] is block-sparse: crow [M/bs + 1], col [nnzb] (block column), values [nnzb][bs][bs]
// (row-major blocks).
//
// Forward (y = x @ W^T) and dx (= dy @ W) read the input in batch panels [ceil(N/BT)][features][BT]
// (BT = one cache line): per (block row, panel) the output tile [bs][BT] is a sum of small dense
// GEMMs, block (bs x bs) times the bs panel rows of its input features. Register tiles of R output
// rows x BT lanes: per reduction step one panel row (NV vectors) is loaded and R weights are
// broadcast. The finished tile (in a per-thread L1 buffer) is transposed straight into the
// row-major output. dx runs the same kernel over the transposed (CSC) block index, reading each
// block transposed through perm (values are not copied).
//
// dW (SDDMM): out[p] = dy[:, rows of p]^T @ x[:, cols of p], a GEMM whose reduction runs over the
// batch. When bs is a multiple of the vector width, x is packed block-column-major [K/bs][N][bs]
// and each thread copies the dy slice [N][bs] of its block row into a local buffer (contiguous
// slices: no 4 KiB-aliased row-major strides), and the kernel vectorizes over the block's
// columns, the batch chunked to stay in L1. Otherwise (small or odd blocks) dy and x are
// transposed (batch-contiguous rows) and every output is a dot product vectorized over the batch,
// 2 x 4 outputs at a time, reduced horizontally at the end.
//
// Threads own disjoint output tiles / blocks: no atomics, no shared writes.

namespace granet {
namespace cpu {
namespace GRANET_ISA {

namespace {

#include "cpu/simd_impl.h"

// All lanes = s, as one broadcast. Simd<T>::splat's `vec{} + s` costs an extra add (0 + s is not
// s for s = -0, so the compiler keeps it); s - 0 is s for every s and folds away.
template <typename T>
inline typename Simd<T>::vec bsr_splat(T s) {
  return s - typename Simd<T>::vec{};
}

// Calls f.template operator()<r>() for the run-time r in [1, R].
template <int R, typename F>
inline void bsr_with_rows(int64_t r, F&& f) {
  if constexpr (R > 1) {
    if (r < R) {
      bsr_with_rows<R - 1>(r, f);
      return;
    }
  }
  f.template operator()<R>();
}

// dst[j * ds + i] = src[i * ss + j] for an L x L tile, L = the vector width: in registers for
// L = 4 and 8, element by element otherwise.
template <typename T>
inline void bsr_transpose_tile(const T* src, int64_t ss, T* dst, int64_t ds) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int L = S::lanes;
  typedef typename IntOf<T>::type ivec __attribute__((vector_size(GRANET_VECTOR_BYTES)));
  if constexpr (L == 8) {
    vec r[8], t[8], u[8];
    for (int i = 0; i < 8; ++i) r[i] = S::load(src + i * ss);
    for (int i = 0; i < 8; i += 2) {
      t[i] = __builtin_shuffle(r[i], r[i + 1], ivec{0, 8, 1, 9, 4, 12, 5, 13});
      t[i + 1] = __builtin_shuffle(r[i], r[i + 1], ivec{2, 10, 3, 11, 6, 14, 7, 15});
    }
    for (int i = 0; i < 8; i += 4) {
      u[i] = __builtin_shuffle(t[i], t[i + 2], ivec{0, 1, 8, 9, 4, 5, 12, 13});
      u[i + 1] = __builtin_shuffle(t[i], t[i + 2], ivec{2, 3, 10, 11, 6, 7, 14, 15});
      u[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], ivec{0, 1, 8, 9, 4, 5, 12, 13});
      u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], ivec{2, 3, 10, 11, 6, 7, 14, 15});
    }
    for (int j = 0; j < 4; ++j) {
      S::store(dst + j * ds, __builtin_shuffle(u[j], u[j + 4], ivec{0, 1, 2, 3, 8, 9, 10, 11}));
      S::store(dst + (j + 4) * ds, __builtin_shuffle(u[j], u[j + 4], ivec{4, 5, 6, 7, 12, 13, 14, 15}));
    }
  } else if constexpr (L == 4) {
    vec r[4], t[4];
    for (int i = 0; i < 4; ++i) r[i] = S::load(src + i * ss);
    for (int i = 0; i < 4; i += 2) {
      t[i] = __builtin_shuffle(r[i], r[i + 1], ivec{0, 4, 2, 6});
      t[i + 1] = __builtin_shuffle(r[i], r[i + 1], ivec{1, 5, 3, 7});
    }
    S::store(dst, __builtin_shuffle(t[0], t[2], ivec{0, 1, 4, 5}));
    S::store(dst + ds, __builtin_shuffle(t[1], t[3], ivec{0, 1, 4, 5}));
    S::store(dst + 2 * ds, __builtin_shuffle(t[0], t[2], ivec{2, 3, 6, 7}));
    S::store(dst + 3 * ds, __builtin_shuffle(t[1], t[3], ivec{2, 3, 6, 7}));
  } else {
    for (int i = 0; i < L; ++i)
      for (int j = 0; j < L; ++j) dst[j * ds + i] = src[i * ss + j];
  }
}

// x [n][k] (row-major, contiguous) -> panels [ceil(n/BT)][k][BT], zero-filled past n.
template <typename T, int BT>
void bsr_pack_panels(const T* x, T* panels, int64_t n, int64_t k) {
  constexpr int L = Simd<T>::lanes;
  static_assert(BT % L == 0, "a panel is whole vectors");
  const int64_t n_panels = (n + BT - 1) / BT;
  constexpr int64_t KB = 64;  // transpose in k-blocks so reads and writes both stay in cache
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t p = 0; p < n_panels; ++p) {
    for (int64_t k0 = 0; k0 < k; k0 += KB) {
      const int64_t k1 = min_i64(k0 + KB, k);
      T* dst = panels + p * k * BT;
      const int64_t lanes = min_i64(BT, n - p * BT);
      int64_t j0 = k0;
      if (lanes == BT) {
        for (; j0 + L <= k1; j0 += L)
          for (int b0 = 0; b0 < BT; b0 += L)
            bsr_transpose_tile<T>(x + (p * BT + b0) * k + j0, k, dst + j0 * BT + b0, BT);
      }
      for (int64_t b = 0; b < BT; ++b) {
        if (b < lanes) {
          const T* src = x + (p * BT + b) * k;
          for (int64_t j = j0; j < k1; ++j) dst[j * BT + b] = src[j];
        } else {
          for (int64_t j = j0; j < k1; ++j) dst[j * BT + b] = T(0);
        }
      }
    }
  }
}

// x [n][k] (row-major, contiguous) -> block columns [k/bs][n][bs].
template <typename T>
void bsr_pack_block_cols(const T* x, T* out, int64_t n, int64_t k, int64_t bs) {
  const int64_t nb = k / bs;
  constexpr int64_t NB = 64;  // rows per task
  const int64_t row_chunks = (n + NB - 1) / NB;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t c = 0; c < row_chunks; ++c) {
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t r1 = min_i64((c + 1) * NB, n);
      for (int64_t r = c * NB; r < r1; ++r) {
        const T* src = x + r * k + b * bs;
        T* dst = out + (b * n + r) * bs;
        for (int64_t j = 0; j < bs; ++j) dst[j] = src[j];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward / dx: one tile of R output rows x BT lanes of one block:
//   acc[r] (+)= sum_{kk < bs} w[r * so + kk * sk] * xr[kk * BT .. +BT]
// so/sk: the block's strides along the output row and the reduction (bs, 1 as stored; 1, bs
// read transposed).
template <typename T, int BT, int R>
inline void bsr_tile_fma(typename Simd<T>::vec (&acc)[R][BT / Simd<T>::lanes], const T* w, int64_t so, int64_t sk,
                         const T* xr, int64_t bs) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int NV = BT / S::lanes;
  for (int64_t kk = 0; kk < bs; ++kk) {
    vec xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = S::load(xr + kk * BT + v * S::lanes);
    const T* wk = w + kk * sk;
    for (int r = 0; r < R; ++r) {
      const vec b = bsr_splat<T>(wk[r * so]);
      for (int v = 0; v < NV; ++v) acc[r][v] += b * xv[v];
    }
  }
}

// Rows per register tile: R x NV accumulators plus NV inputs and one broadcast in the registers.
template <typename T, int BT>
constexpr int bsr_tile_rows() {
  constexpr int NV = BT / Simd<T>::lanes;
  constexpr int regs = GRANET_VECTOR_BYTES == 64 ? 32 : 16;
  return NV >= 4 ? (regs - NV - 1) / NV : (NV == 1 ? (regs == 32 ? 16 : 8) : 6);
}

// One output tile out [bs][BT] of a panel = sum over the slots s in [s0, s1) of
// block blk[s] (or s when blk is null), its input block index in_idx[s] selecting bs panel rows.
// TRANS: read the blocks transposed (dx).
// next_panel (or null): the panel of the tile computed next, whose first block is prefetched
// during the last block of this one.
template <typename T, int BT, bool TRANS>
inline void bsr_output_tile(const int32_t* blk, const int32_t* in_idx, int32_t s0, int32_t s1, const T* values,
                            const T* panel, const T* next_panel, T* out, int64_t bs) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int NV = BT / S::lanes;
  constexpr int R = bsr_tile_rows<T, BT>();
  const int64_t bs2 = bs * bs;
  const int64_t so = TRANS ? 1 : bs, sk = TRANS ? bs : 1;
  // Row chunks of at most R rows, as even as possible (32 rows by 6: 6, 6, 5, 5, 5, 5): a short
  // last chunk would have too few accumulators to hide the FMA latency.
  const int64_t chunks = (bs + R - 1) / R, base = bs / chunks, extra = bs % chunks;
  auto chunk_rows = [=](int64_t c) { return base + (c < extra ? 1 : 0); };
  if (bs >= 8) {
    // Large blocks: block by block, the tile accumulating in memory (L1): the block, its panel
    // rows and the tile stay in L1 while all row chunks go over them.
    for (int64_t e = 0; e < bs * BT; ++e) out[e] = T(0);
    for (int32_t s = s0; s < s1; ++s) {
      const int64_t q = blk ? blk[s] : s;
      const T* w = values + q * bs2;
      const T* xr = panel + static_cast<int64_t>(in_idx[s]) * bs * BT;
      // The next block and its panel rows, a slice per row chunk (the panel rows come from L3).
      const int32_t sn = s + 1 < s1 ? s + 1 : s0;
      const T* w_next = values + (blk ? blk[sn] : sn) * bs2;
      const T* x_next = s + 1 < s1 ? panel : next_panel;
      if (x_next) x_next += static_cast<int64_t>(in_idx[sn]) * bs * BT;
      for (int64_t c = 0, r0 = 0; c < chunks; ++c) {
        const int64_t r1 = r0 + chunk_rows(c);
        if (x_next) {
          for (int64_t e = r0 * BT; e < r1 * BT; e += 64 / sizeof(T)) __builtin_prefetch(x_next + e);
          for (int64_t e = r0 * bs; e < r1 * bs; e += 64 / sizeof(T)) __builtin_prefetch(w_next + e);
        }
        bsr_with_rows<R>(r1 - r0, [&]<int RR>() {
          T* o = out + r0 * BT;
          vec acc[RR][NV];
          for (int r = 0; r < RR; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = S::load(o + r * BT + v * S::lanes);
          bsr_tile_fma<T, BT, RR>(acc, w + r0 * so, so, sk, xr, bs);
          for (int r = 0; r < RR; ++r)
            for (int v = 0; v < NV; ++v) S::store(o + r * BT + v * S::lanes, acc[r][v]);
        });
        r0 = r1;
      }
    }
    return;
  }
  // Small blocks: the accumulators stay in registers over all blocks of the row.
  for (int64_t c = 0, r0 = 0; c < chunks; r0 += chunk_rows(c), ++c) {
    bsr_with_rows<R>(chunk_rows(c), [&]<int RR>() {
      vec acc[RR][NV];
      for (int r = 0; r < RR; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = vec{};
      for (int32_t s = s0; s < s1; ++s) {
        const int64_t q = blk ? blk[s] : s;
        bsr_tile_fma<T, BT, RR>(acc, values + q * bs2 + r0 * so, so, sk,
                                panel + static_cast<int64_t>(in_idx[s]) * bs * BT, bs);
      }
      T* o = out + r0 * BT;
      for (int r = 0; r < RR; ++r)
        for (int v = 0; v < NV; ++v) S::store(o + r * BT + v * S::lanes, acc[r][v]);
    });
  }
}

// tile [bs][BT] -> out[b * ld + r] = tile[r * BT + b] for the first `lanes` lanes b.
template <typename T, int BT>
inline void bsr_tile_to_rows(const T* tile, T* out, int64_t ld, int64_t bs, int64_t lanes) {
  constexpr int L = Simd<T>::lanes;
  int64_t r0 = 0;
  if (lanes == BT) {
    for (; r0 + L <= bs; r0 += L)
      for (int b0 = 0; b0 < BT; b0 += L) bsr_transpose_tile<T>(tile + r0 * BT + b0, BT, out + b0 * ld + r0, ld);
  }
  for (int64_t b = 0; b < lanes; ++b)
    for (int64_t r = r0; r < bs; ++r) out[b * ld + r] = tile[r * BT + b];
}

// out [n][rows*bs] (row-major): for every block row i (of `rows`) and panel p, the tile of block
// row i is the sum over ptr[i]..ptr[i+1], computed in a per-thread L1 tile and transposed into
// out's rows. in panels [P][in_feats][BT].
template <typename T, int BT, bool TRANS>
void bsr_spmm_panels(const int32_t* ptr, const int32_t* blk, const int32_t* in_idx, const T* values, const T* inp,
                     T* out, int64_t n, int64_t rows, int64_t in_feats, int64_t bs) {
  const int64_t n_panels = (n + BT - 1) / BT;
  const int64_t out_feats = rows * bs;
#pragma omp parallel
  {
    T* tile = new T[bs * BT];
    // Block row outer: the row's blocks stay in L2 across the panels.
#pragma omp for collapse(2) schedule(guided)
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t p = 0; p < n_panels; ++p) {
        const T* panel = inp + p * in_feats * BT;
        bsr_output_tile<T, BT, TRANS>(blk, in_idx, ptr[i], ptr[i + 1], values, panel,
                                      p + 1 < n_panels ? panel + in_feats * BT : nullptr, tile, bs);
        bsr_tile_to_rows<T, BT>(tile, out + p * BT * out_feats + i * bs, out_feats, bs, min_i64(BT, n - p * BT));
      }
    }
    delete[] tile;
  }
}

// Block rows per register tile of the dW kernel: R x CV accumulators.
template <typename T, int CV>
constexpr int bsr_sddmm_rows() {
  // 12 accumulators of 16 registers (24 of 32); the x vectors can be FMA memory operands.
  constexpr int acc = GRANET_VECTOR_BYTES == 64 ? 24 : 12;
  return acc / CV > 12 ? 12 : acc / CV;
}

// ---------------------------------------------------------------------------------------------
// dW, vectorized over block columns (bs % lanes == 0). dyb: the block row's dy slice [n][bs];
// xb: the block column's x slice [n][bs].
// Tile: R rows x CV column vectors of one block, reduced over a chunk of the batch:
//   acc[r][v] (+)= sum_t dy[t][r0 + r] * x[t][c0 + v*L ..]
template <typename T, int R, int CV>
inline void bsr_sddmm_tile(const T* dyb, const T* xb, T* out, int64_t t0, int64_t t1, int64_t bs, bool first) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int L = S::lanes;
  vec acc[R][CV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < CV; ++v) acc[r][v] = first ? vec{} : S::load(out + r * bs + v * L);
  const T* d = dyb + t0 * bs;
  const T* xr = xb + t0 * bs;
  for (int64_t t = t0; t < t1; ++t, d += bs, xr += bs) {
    vec xv[CV];
    for (int v = 0; v < CV; ++v) xv[v] = S::load(xr + v * L);
    for (int r = 0; r < R; ++r) {
      const vec b = bsr_splat<T>(d[r]);
      for (int v = 0; v < CV; ++v) acc[r][v] += b * xv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < CV; ++v) S::store(out + r * bs + v * L, acc[r][v]);
}


// dy [n][rows*bs] row-major; xb [K/bs][n][bs] (x packed by block columns). Threads take block
// rows: each packs its row's dy slice [n][bs] into a local buffer (read once from dy, then kept
// in L1/L2 for all blocks of the row), then computes the row's blocks.
template <typename T>
void bsr_sddmm_blockcols(const int32_t* crow, const int32_t* col, const T* dy, const T* xb, T* out, int64_t n,
                         int64_t rows, int64_t bs) {
  constexpr int L = Simd<T>::lanes;
  const int64_t n_vec = bs / L;
  const int64_t bs2 = bs * bs, m = rows * bs;
  // Batch chunk: the tile's x columns and the block's dy rows of the chunk, plus the output
  // block, within about 24 KiB (L1 is at least 32 KiB).
  const int64_t cols_per_pass = min_i64(n_vec, 4) * L;
  int64_t tc = (24 * 1024 / static_cast<int64_t>(sizeof(T)) - bs * cols_per_pass) / (bs + cols_per_pass);
  tc = tc < 16 ? 16 : (tc > 512 ? 512 : tc);
  tc = n > 0 ? (n + (n + tc - 1) / tc - 1) / ((n + tc - 1) / tc) : 1;  // even chunks
#pragma omp parallel
  {
    T* dy_blk = new T[n * bs];
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < rows; ++i) {
      if (crow[i] == crow[i + 1]) continue;
      for (int64_t t = 0; t < n; ++t) {
        const T* src = dy + t * m + i * bs;
        for (int64_t j = 0; j < bs; ++j) dy_blk[t * bs + j] = src[j];
      }
      for (int32_t q = crow[i]; q < crow[i + 1]; ++q) {
        const T* x_blk = xb + static_cast<int64_t>(col[q]) * n * bs;
        T* o = out + static_cast<int64_t>(q) * bs2;
        if (n == 0)
          for (int64_t e = 0; e < bs2; ++e) o[e] = T(0);
        for (int64_t v0 = 0; v0 < n_vec; v0 += 4) {
          const int64_t cv = min_i64(4, n_vec - v0);
          for (int64_t t0 = 0; t0 < n; t0 += tc) {
            const int64_t t1 = min_i64(t0 + tc, n);
            const bool first = t0 == 0;
            auto run = [&]<int CV>() {
              constexpr int R = bsr_sddmm_rows<T, CV>();
              const int64_t chunks = (bs + R - 1) / R, base = bs / chunks, extra = bs % chunks;
              for (int64_t c = 0, r0 = 0; c < chunks; ++c) {
                const int64_t rows_c = base + (c < extra ? 1 : 0);
                bsr_with_rows<R>(rows_c, [&]<int RR>() {
                  bsr_sddmm_tile<T, RR, CV>(dy_blk + r0, x_blk + v0 * L, o + r0 * bs + v0 * L, t0, t1, bs, first);
                });
                r0 += rows_c;
              }
            };
            if (cv == 4) run.template operator()<4>();
            else if (cv == 3) run.template operator()<3>();
            else if (cv == 2) run.template operator()<2>();
            else run.template operator()<1>();
          }
        }
      }
    }
    delete[] dy_blk;
  }
}

// src [n][k] (row-major, contiguous) -> dst [k][np] = src^T, zero-filled for n <= i < np.
template <typename T>
void bsr_transpose_pad(const T* src, T* dst, int64_t n, int64_t k, int64_t np) {
  constexpr int L = Simd<T>::lanes;
  constexpr int64_t JB = 64;  // columns of src per task
  const int64_t n_full = n / L * L;
#pragma omp parallel for schedule(static)
  for (int64_t j0 = 0; j0 < k; j0 += JB) {
    const int64_t j1 = min_i64(j0 + JB, k);
    int64_t j = j0;
    for (; j + L <= j1; j += L)
      for (int64_t i = 0; i < n_full; i += L) bsr_transpose_tile<T>(src + i * k + j, k, dst + j * np + i, np);
    for (int64_t jj = j0; jj < j1; ++jj) {
      T* d = dst + jj * np;
      const int64_t i0 = jj < j ? n_full : 0;
      for (int64_t i = i0; i < n; ++i) d[i] = src[i * k + jj];
      for (int64_t i = n; i < np; ++i) d[i] = T(0);
    }
  }
}

// dW tile for any bs: out[r][c] = <dyt[r], xt[c]> for RR rows and CC columns of one block,
// dot products of length np (a multiple of the vector width) over the transposed operands.
template <typename T, int RR, int CC>
inline void bsr_sddmm_dot_tile(const T* dyt, const T* xt, int64_t np, T* out, int64_t ld_out) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int L = S::lanes;
  vec acc[RR][4];
  for (int u = 0; u < RR; ++u)
    for (int c = 0; c < 4; ++c) acc[u][c] = vec{};
  for (int64_t t = 0; t < np; t += L) {
    vec d[RR], xv[CC];
    for (int u = 0; u < RR; ++u) d[u] = S::load(dyt + u * np + t);
    for (int c = 0; c < CC; ++c) xv[c] = S::load(xt + c * np + t);
    for (int u = 0; u < RR; ++u)
      for (int c = 0; c < CC; ++c) acc[u][c] += d[u] * xv[c];
  }
  for (int u = 0; u < RR; ++u) {
    T sums[4];
    hsum4<T>(acc[u][0], acc[u][1], acc[u][2], acc[u][3], sums);
    for (int c = 0; c < CC; ++c) out[u * ld_out + c] = sums[c];
  }
}

// dW for any bs, over the transposed operands dyt [m][np], xt [k][np] (np = n rounded up to the
// vector width, zero-padded): every output is a contiguous dot product over the batch.
template <typename T>
void bsr_sddmm_dots(const int32_t* crow, const int32_t* col, const T* dyt, const T* xt, T* out, int64_t np,
                    int64_t rows, int64_t bs) {
  const int64_t bs2 = bs * bs;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < rows; ++i) {
    for (int32_t q = crow[i]; q < crow[i + 1]; ++q) {
      const T* xb = xt + static_cast<int64_t>(col[q]) * bs * np;
      T* o = out + static_cast<int64_t>(q) * bs2;
      for (int64_t r0 = 0; r0 < bs; r0 += 2) {
        const T* db = dyt + (i * bs + r0) * np;
        for (int64_t c0 = 0; c0 < bs; c0 += 4) {
          bsr_with_rows<2>(min_i64(2, bs - r0), [&]<int RR>() {
            bsr_with_rows<4>(min_i64(4, bs - c0), [&]<int CC>() {
              bsr_sddmm_dot_tile<T, RR, CC>(db, xb + c0 * np, np, o + r0 * bs + c0, bs);
            });
          });
        }
      }
    }
  }
}

}  // namespace

// Entry points: T = float or double; dense operands row-major and contiguous; the workspaces hold
// panel_buffer_elems<T>(n, features) elements each.

// y [n][rows*bs] = x [n][k] @ W^T.
template <typename T>
inline void bsr_spmm(const int32_t* crow, const int32_t* col, const T* values, const T* x, T* y, T* x_ws,
                     int64_t n, int64_t rows, int64_t k, int64_t bs) {
  constexpr int BT = ::granet::cpu::kPanelBytes / sizeof(T);
  bsr_pack_panels<T, BT>(x, x_ws, n, k);
  bsr_spmm_panels<T, BT, false>(crow, nullptr, col, values, x_ws, y, n, rows, k, bs);
}

// dx [n][cols*bs] = dy [n][m] @ W, through the transposed block index (ccol [cols+1], row, perm).
template <typename T>
inline void bsr_spmm_t(const int32_t* ccol, const int32_t* row, const int32_t* perm, const T* values, const T* dy,
                       T* dx, T* dy_ws, int64_t n, int64_t m, int64_t cols, int64_t bs) {
  constexpr int BT = ::granet::cpu::kPanelBytes / sizeof(T);
  bsr_pack_panels<T, BT>(dy, dy_ws, n, m);
  bsr_spmm_panels<T, BT, true>(ccol, perm, row, values, dy_ws, dx, n, cols, m, bs);
}

// out [nnzb][bs][bs]: out[q] = dy[:, block row of q]^T @ x[:, block col of q]. (dy_ws is used only
// when bs is not a multiple of the vector width.)
template <typename T>
inline void bsr_sddmm(const int32_t* crow, const int32_t* col, const T* dy, const T* x, T* out, T* dy_ws, T* x_ws,
                      int64_t n, int64_t rows, int64_t k, int64_t bs) {
  const int64_t m = rows * bs;
  if (bs % Simd<T>::lanes == 0) {
    bsr_pack_block_cols<T>(x, x_ws, n, k, bs);
    bsr_sddmm_blockcols<T>(crow, col, dy, x_ws, out, n, rows, bs);
  } else {
    const int64_t np = (n + Simd<T>::lanes - 1) / Simd<T>::lanes * Simd<T>::lanes;  // <= panel rows
    bsr_transpose_pad<T>(dy, dy_ws, n, m, np);
    bsr_transpose_pad<T>(x, x_ws, n, k, np);
    bsr_sddmm_dots<T>(crow, col, dy_ws, x_ws, out, np, rows, bs);
  }
}

}  // namespace GRANET_ISA
}  // namespace cpu
}  // namespace granet
