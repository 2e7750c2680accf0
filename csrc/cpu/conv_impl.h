// Sparse conv2d kernels, compiled once per ISA by for_each_isa.h (namespace granet::cpu::GRANET_ISA).
// Plain C++ only: see for_each_isa.h.
//
// Direct convolution on batch-blocked planes: the source operand is packed as
//     [N/L][channels][plane pixels][L]     (L = one SIMD vector of batch lanes)
// so one pixel of L images is one vector, and a run of pixels is a run of contiguous vectors (for
// 1x1 / stride 1 / unpadded convolutions the NCHW tensors are used as they are, a vector being L
// consecutive pixels: "pixel lanes").
// The host (conv.cpp) turns every conv pass (forward; input gradient, phase by phase for stride > 1)
// into the same problem: destination pixels ("tile space") cut into tiles of at most 14 pixels,
// and per destination channel a list of entries (pre-scaled source offset, weight value). A tile
// keeps one accumulator vector per pixel in registers; each entry adds w * (the contiguous run of
// source vectors at its offset): one broadcast, then contiguous loads + FMAs, no stores.
// Source channels are blocked (channel block cb) so that a tile's source footprint over one block
// stays in L1; between blocks the tile's partial sums wait in a small per-thread buffer, and after
// the last block they go straight to the NCHW output (through the tile space -> output map, with
// in-register L x L transposes).
// The fused backward also takes dW from the same loads: for every entry the dot product of x at the
// tile's pixels with the loaded dY run; the dot vectors of L consecutive entries are reduced together
// by a transposing tree into one vector of L sums, added to the entries' dW accumulators at once.

#ifndef GRANET_CONV_TASK_DEFINED
#define GRANET_CONV_TASK_DEFINED
#ifdef _OPENMP
#include <omp.h>
#endif

namespace granet {
namespace cpu {

// Tiles of at most this many pixels (accumulator vectors): 14 accumulators + 1 broadcast fill the
// 16 vector registers of SSE/AVX2. The fused dX + dW tile also holds the loaded vector and two dot
// products: at most kConvMaxFusedTile pixels.
constexpr int kConvMaxTile = 14;
constexpr int kConvMaxFusedTile = 7;

// One pass of the engine. Pixel counts are in pixels (vectors); offsets in elements.
template <typename T>
struct ConvTask {
  // Lanes: batch lanes (the default: operands packed as [N/L][C][pixels][L]) or, for 1x1 convolutions
  // with stride 1 and no padding, pixel lanes: the NCHW tensors themselves, one vector = L consecutive
  // pixels of one image and channel ("batch block" = image; a plane whose size is not a multiple of L
  // ends in a tail tile that overlaps the previous vector).
  bool pixel_lanes;
  const T* src;          // [nb][src_bb elements]: packed source planes (pixel lanes: [N][C][HW])
  int64_t src_bb;        // elements per batch block of src
  // Accumulation (forward output / dX), when acc: out[img][c][map[pixel]] (+ bias[c]).
  T* out;
  int64_t out_img, out_ch;  // strides of out
  const int32_t* map;       // tile-space pixel -> index in an output plane, or -1 (dropped)
  const T* bias;            // [n_dst] or null
  int64_t n_img;            // images (lanes past it are not written)
  T* partial;               // per thread: [n_dst][max_w][L] partial sums between channel blocks
  int64_t partial_thread;   // elements per thread
  // dW, when dw: x at the tile-space pixels, [nb][n_dst][xt_ch] (pixel lanes: x itself, and for the
  // tail tile xtail [N][n_dst][L], x's last L pixels with the lanes of the previous vector zeroed)
  const T* xt;
  int64_t xt_bb, xt_ch;
  const T* xtail;
  int64_t n_dst;          // destination channels
  const int32_t* tiles;   // n_tiles x 4: source element offset, tile-space pixel (pixel lanes: element
                          // offset), width, tail (pixel lanes: the overlapping last vector of a plane)
  int64_t n_tiles, max_w;
  const int32_t* seg;     // entries of (channel block cb, destination channel c): [seg[cb*n_dst+c], seg[..+1])
  int64_t n_cb;
  const int32_t* offs;    // per entry: element offset of its source run (source channel + shift)
  const T* vals;          // per entry: weight (null for dW only)
  T* dw;                  // per slot and entry: dW accumulators (null without dW), summed by the host in
                          // slot order; part p adds into slot p mod n_threads (see conv_engine_impl)
  int64_t dw_thread;      // entries per slot
  const int64_t* parts;   // n_parts x 4: [bb0, bb1, c0, c1) work items
  int64_t n_parts;
  int n_threads;          // threads (and dW slots) of the pass; partial and dw have room for each
};

}  // namespace cpu
}  // namespace granet
#endif

namespace granet {
namespace cpu {
namespace GRANET_ISA {

namespace {

#include "cpu/simd_impl.h"

// Broadcast of a scalar: one vbroadcast (Simd::splat's vec{} + s costs an extra add, since
// -0.0 + 0.0 is +0.0; s - 0.0 is s for every s, so the compiler drops the subtraction).
template <typename T>
inline typename Simd<T>::vec bcast(T s) {
  return s - typename Simd<T>::vec{};
}

// Register-allocation fences (no code): the value must be in a register / may have changed.
// (GRANET_CONV_NO_ASM_FENCE: for test builds whose vectors are wider than the target's registers.)
template <typename V>
inline void opaque_vec(V& v) {
#if (defined(__x86_64__) || defined(__i386__)) && !defined(GRANET_CONV_NO_ASM_FENCE)
  asm("" : "+x"(v));
#else
  (void)v;
#endif
}
template <typename P>
inline void opaque_ptr(P& p) {
  asm("" : "+r"(p));
}

// The calling thread's number in the current OpenMP team (0 outside one or without OpenMP).
inline int current_thread() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Two-input lane shuffles of the transposes and reductions, as constant masks for L = 2, 4, 8, 16.
// GRANET_CONV_LANES(M) expands to {M(0), ..., M(L-1)}.
#define GRANET_CONV_LANES2(M) {M(0), M(1)}
#define GRANET_CONV_LANES4(M) {M(0), M(1), M(2), M(3)}
#define GRANET_CONV_LANES8(M) {M(0), M(1), M(2), M(3), M(4), M(5), M(6), M(7)}
#define GRANET_CONV_LANES16(M) \
  {M(0), M(1), M(2), M(3), M(4), M(5), M(6), M(7), M(8), M(9), M(10), M(11), M(12), M(13), M(14), M(15)}
#define GRANET_CONV_SHUFFLE2(a, b, MLO, MHI, lo, hi)                                         \
  do {                                                                                      \
    if constexpr (L == 2) {                                                                 \
      const ivec mlo = GRANET_CONV_LANES2(MLO), mhi = GRANET_CONV_LANES2(MHI);              \
      lo = __builtin_shuffle(a, b, mlo);                                                    \
      hi = __builtin_shuffle(a, b, mhi);                                                    \
    } else if constexpr (L == 4) {                                                          \
      const ivec mlo = GRANET_CONV_LANES4(MLO), mhi = GRANET_CONV_LANES4(MHI);              \
      lo = __builtin_shuffle(a, b, mlo);                                                    \
      hi = __builtin_shuffle(a, b, mhi);                                                    \
    } else if constexpr (L == 8) {                                                          \
      const ivec mlo = GRANET_CONV_LANES8(MLO), mhi = GRANET_CONV_LANES8(MHI);              \
      lo = __builtin_shuffle(a, b, mlo);                                                    \
      hi = __builtin_shuffle(a, b, mhi);                                                    \
    } else {                                                                                \
      static_assert(L == 16, "lanes must be 2, 4, 8 or 16");                                \
      const ivec mlo = GRANET_CONV_LANES16(MLO), mhi = GRANET_CONV_LANES16(MHI);            \
      lo = __builtin_shuffle(a, b, mlo);                                                    \
      hi = __builtin_shuffle(a, b, mhi);                                                    \
    }                                                                                       \
  } while (0)

// Reduction step of block B: lane l of the result is the sum of a pair of lanes of a (where
// l & B == 0) or of b (else). Applied as a binary tree over L vectors with B = 1, 2, ..., L/2 it
// leaves lane i = the sum of all lanes of vector i.
template <typename T, int B>
inline typename Simd<T>::vec combine(typename Simd<T>::vec a, typename Simd<T>::vec b) {
  constexpr int L = Simd<T>::lanes;
  typedef typename IntOf<T>::type ivec __attribute__((vector_size(GRANET_VECTOR_BYTES)));
#define GRANET_CONV_CLO(l) (((l) & ~(2 * B - 1)) + ((l) & (B - 1)) + (((l) & B) ? L : 0))
#define GRANET_CONV_CHI(l) (GRANET_CONV_CLO(l) + B)
  typename Simd<T>::vec lo, hi;
  GRANET_CONV_SHUFFLE2(a, b, GRANET_CONV_CLO, GRANET_CONV_CHI, lo, hi);
#undef GRANET_CONV_CLO
#undef GRANET_CONV_CHI
  return lo + hi;
}

// Tree over G dot vectors, produced in order by next(): the result's lane i (i < G = L) is the sum of
// vector i's lanes.
template <typename T, int G, typename F>
__attribute__((always_inline)) inline typename Simd<T>::vec reduce_tree(F& next) {
  if constexpr (G == 1) {
    return next();
  } else {
    const typename Simd<T>::vec a = reduce_tree<T, G / 2>(next);
    const typename Simd<T>::vec b = reduce_tree<T, G / 2>(next);
    return combine<T, G / 2>(a, b);
  }
}

// Transpose step of block B: swaps the off-diagonal B x B blocks of rows (a, b).
template <typename T, int B>
inline void transpose_step(typename Simd<T>::vec& a, typename Simd<T>::vec& b) {
  constexpr int L = Simd<T>::lanes;
  typedef typename IntOf<T>::type ivec __attribute__((vector_size(GRANET_VECTOR_BYTES)));
#define GRANET_CONV_TLO(l) (((l) & B) ? (L + (l) - B) : (l))
#define GRANET_CONV_THI(l) (((l) & B) ? (L + (l)) : ((l) + B))
  typename Simd<T>::vec lo, hi;
  GRANET_CONV_SHUFFLE2(a, b, GRANET_CONV_TLO, GRANET_CONV_THI, lo, hi);
#undef GRANET_CONV_TLO
#undef GRANET_CONV_THI
  a = lo;
  b = hi;
}

// In-register transpose of an L x L block (r[i][l] -> r[l][i]).
template <typename T, int B = 1>
__attribute__((always_inline)) inline void transpose(typename Simd<T>::vec* r) {
  constexpr int L = Simd<T>::lanes;
  if constexpr (B < L) {
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i)
      if (!(i & B)) transpose_step<T, B>(r[i], r[i + B]);
    transpose<T, 2 * B>(r);
  }
}

// After the last channel block: lane b of accumulator j goes to out[b][map[j]] (+ bias). Tiles whose
// pixels are one run of the output row (contiguous) with all lanes valid go through in-register
// L x L transposes; the rest element by element, dropping pixels with map < 0 (flat-mode padding).
template <typename T, int W>
__attribute__((always_inline)) inline void write_out(const typename Simd<T>::vec* acc, T* out, int64_t img_stride,
                                                     const int32_t* map, int64_t lanes, T bias, bool contiguous) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int L = S::lanes;
  if (contiguous && lanes == L) {
    T* o = out + map[0];
    const vec bv = bcast<T>(bias);
    if constexpr (W >= L) {
#pragma GCC unroll 4
      for (int j0 = 0; j0 < W; j0 += L) {
        const int s0 = j0 + L <= W ? j0 : W - L;  // the last block overlaps the previous one
        vec r[L];
#pragma GCC unroll 16
        for (int k = 0; k < L; ++k) r[k] = acc[s0 + k] + bv;
        transpose<T>(r);
#pragma GCC unroll 16
        for (int b = 0; b < L; ++b) S::store(o + b * img_stride + s0, r[b]);
      }
    } else {
      vec r[L];
#pragma GCC unroll 16
      for (int k = 0; k < L; ++k) r[k] = k < W ? acc[k] + bv : vec{};
      transpose<T>(r);
#pragma GCC unroll 16
      for (int b = 0; b < L; ++b) __builtin_memcpy(o + b * img_stride, &r[b], W * sizeof(T));
    }
    return;
  }
  T tmp[W * L] __attribute__((aligned(64)));
#pragma GCC unroll 16
  for (int j = 0; j < W; ++j) S::store(tmp + j * L, acc[j]);
  for (int64_t b = 0; b < lanes; ++b) {
    T* ob = out + b * img_stride;
#pragma GCC unroll 16
    for (int j = 0; j < W; ++j) {
      const int32_t m = map[j];
      if (m >= 0) ob[m] = tmp[j * L + b] + bias;
    }
  }
}

// Where a tile's accumulators come from and go to.
template <typename T>
struct TileIo {
  const T* load;      // partial sums to start from, or null (start from zero)
  T* store;           // partial sums to leave, or null: write the output instead
  T* out;             // output of image 0 of the batch block, channel c
  int64_t img_stride; // between images of out
  const int32_t* map; // tile-space -> output plane, at the tile's first pixel
  int64_t lanes;      // images of the batch block
  T bias;
  bool contiguous;    // the tile's output pixels are one run (map[j] = map[0] + j)
  bool pixel_lanes;   // out is the tile's first vector itself: plain stores
};

// One tile: W destination pixels of one destination channel, over the entries of one channel block.
// ACC: accumulate sum_e w_e * src[off_e + j] into the W accumulators. DW: dw[e] += <xt[j], src[off_e + j]>
// summed over the tile's pixels and lanes.
template <typename T, int W, bool ACC, bool DW>
__attribute__((always_inline)) inline void conv_tile(const T* __restrict src, const TileIo<T>& io,
                                                     const T* __restrict xt, const int32_t* __restrict offs,
                                                     const T* __restrict vals, T* __restrict dw, int64_t n) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int L = S::lanes;
  // Narrow accumulate-only tiles would wait on the FMA latency: alternate entries between sets.
  constexpr int SETS = (ACC && !DW) ? (W <= 4 ? 3 : (W <= 7 ? 2 : 1)) : 1;
  vec acc[SETS][W];
  if constexpr (ACC) {
    if (io.load) {
#pragma GCC unroll 16
      for (int j = 0; j < W; ++j) acc[0][j] = S::load(io.load + j * L);
    } else {
#pragma GCC unroll 16
      for (int j = 0; j < W; ++j) acc[0][j] = vec{};
    }
#pragma GCC unroll 16
    for (int j = 0; j < W; ++j)
      for (int k = 1; k < SETS; ++k) acc[k][j] = vec{};
  }
  const int32_t* op = offs;
  const T* vp = vals;
  const int32_t* const oe = offs + n;
  if constexpr (!DW) {
    if constexpr (SETS > 1) {
      for (; oe - op >= SETS; op += SETS, vp += SETS) {
#pragma GCC unroll 4
        for (int k = 0; k < SETS; ++k) {
          const T* p = src + op[k];
          const vec w = bcast<T>(vp[k]);
#pragma GCC unroll 16
          for (int j = 0; j < W; ++j) acc[k][j] += w * S::load(p + j * L);
        }
      }
    }
    for (; op != oe; ++op, ++vp) {
      const T* p = src + *op;
      const vec w = bcast<T>(*vp);
#pragma GCC unroll 16
      for (int j = 0; j < W; ++j) acc[0][j] += w * S::load(p + j * L);
    }
  } else {
    // x is read from L1 by every entry (an opaque copy of the pointer keeps the compiler from
    // hoisting it into spilled registers); the loaded source vector is made opaque so that it is
    // loaded once and used by both FMAs.
    auto entry = [&]() __attribute__((always_inline)) {
      const T* p = src + *op++;
      const T* xr = xt;
      opaque_ptr(xr);
      vec w = vec{};
      if constexpr (ACC) w = bcast<T>(*vp++);
      vec dot0 = vec{}, dot1 = vec{};  // two chains: shorter FMA latency
#pragma GCC unroll 16
      for (int j = 0; j < W; ++j) {
        vec d = S::load(p + j * L);
        if constexpr (ACC) {
          opaque_vec(d);
          acc[0][j] += w * d;
        }
        if (j & 1) dot1 += S::load(xr + j * L) * d;
        else dot0 += S::load(xr + j * L) * d;
      }
      return dot0 + dot1;
    };
    T* dp = dw;
    for (; oe - op >= L; dp += L) {
      const vec sums = reduce_tree<T, L>(entry);
      S::store(dp, S::load(dp) + sums);
    }
    const int64_t rest = oe - op;
    if (rest > 0) {
      vec dots[L];
      for (int64_t i = 0; i < L; ++i) dots[i] = i < rest ? entry() : vec{};
      int i = 0;
      auto from_array = [&]() __attribute__((always_inline)) { return dots[i++]; };
      const vec sums = reduce_tree<T, L>(from_array);
      for (int64_t k = 0; k < rest; ++k) dp[k] += sums[k];
    }
  }
  if constexpr (ACC) {
    if constexpr (SETS > 1) {
#pragma GCC unroll 16
      for (int j = 0; j < W; ++j)
        for (int k = 1; k < SETS; ++k) acc[0][j] += acc[k][j];
    }
    if (io.store) {
#pragma GCC unroll 16
      for (int j = 0; j < W; ++j) S::store(io.store + j * L, acc[0][j]);
    } else if (io.pixel_lanes) {
      const vec bv = bcast<T>(io.bias);
#pragma GCC unroll 16
      for (int j = 0; j < W; ++j) S::store(io.out + j * L, acc[0][j] + bv);
    } else {
      write_out<T, W>(acc[0], io.out, io.img_stride, io.map, io.lanes, io.bias, io.contiguous);
    }
  }
}

// One tile of one batch block over all channel blocks and the destination channels [c0, c1).
// x: dW's x at the tile for channel 0, x_ch: between channels.
template <typename T, int W, bool ACC, bool DW>
void conv_tile_loop(const ::granet::cpu::ConvTask<T>& t, const T* s, int64_t bb, int64_t dp, const T* x,
                    int64_t x_ch, T* partial, T* dw, int64_t c0, int64_t c1) {
  constexpr int64_t L = Simd<T>::lanes;
  TileIo<T> io{nullptr, nullptr, nullptr, 0, nullptr, 0, T(0), false, t.pixel_lanes};
  T* out_bb = nullptr;
  if constexpr (ACC) {
    if (t.pixel_lanes) {
      out_bb = t.out + bb * t.out_img + dp;
    } else {
      out_bb = t.out + bb * L * t.out_img;
      io.img_stride = t.out_img;
      io.map = t.map + dp;
      io.lanes = t.n_img - bb * L < L ? t.n_img - bb * L : L;
      io.contiguous = io.map[0] >= 0 && io.map[W - 1] == io.map[0] + W - 1;
      for (int j = 1; j < W - 1; ++j) io.contiguous = io.contiguous && io.map[j] == io.map[0] + j;
    }
  }
  const int64_t last = t.n_cb - 1;
  for (int64_t cb = 0; cb <= last; ++cb) {
    const int32_t* sg = t.seg + cb * t.n_dst;
    for (int64_t c = c0; c < c1; ++c) {
      const int32_t e0 = sg[c], e1 = sg[c + 1];
      if constexpr (ACC) {
        // Every channel starts at block 0 and is written out at the last block.
        if (e0 == e1 && cb > 0 && cb < last) continue;
        T* part = partial + c * t.max_w * L;
        io.load = cb > 0 ? part : nullptr;
        io.store = cb < last ? part : nullptr;
        if (cb == last) {
          io.out = out_bb + c * t.out_ch;
          io.bias = t.bias ? t.bias[c] : T(0);
        }
      } else {
        if (e0 == e1) continue;
      }
      conv_tile<T, W, ACC, DW>(s, io, DW ? x + c * x_ch : nullptr, t.offs + e0, ACC ? t.vals + e0 : nullptr,
                               DW ? dw + e0 : nullptr, e1 - e0);
    }
  }
}

template <typename T, bool ACC, bool DW>
void conv_tile_dispatch(int w, const ::granet::cpu::ConvTask<T>& t, const T* s, int64_t bb, int64_t dp, const T* x,
                        int64_t x_ch, T* partial, T* dw, int64_t c0, int64_t c1) {
#define GRANET_CONV_TILE_CASE(K)                                                 \
  case K:                                                                        \
    conv_tile_loop<T, K, ACC, DW>(t, s, bb, dp, x, x_ch, partial, dw, c0, c1); \
    break;
  switch (w) {
    GRANET_CONV_TILE_CASE(1)
    GRANET_CONV_TILE_CASE(2)
    GRANET_CONV_TILE_CASE(3)
    GRANET_CONV_TILE_CASE(4)
    GRANET_CONV_TILE_CASE(5)
    GRANET_CONV_TILE_CASE(6)
    GRANET_CONV_TILE_CASE(7)
    GRANET_CONV_TILE_CASE(8)
    GRANET_CONV_TILE_CASE(9)
    GRANET_CONV_TILE_CASE(10)
    GRANET_CONV_TILE_CASE(11)
    GRANET_CONV_TILE_CASE(12)
    GRANET_CONV_TILE_CASE(13)
    GRANET_CONV_TILE_CASE(14)
    default:
      break;  // the host never makes wider tiles
  }
#undef GRANET_CONV_TILE_CASE
}

// One part (batch blocks [bb0, bb1) x destination channels [c0, c1)): batch block -> tile -> channel
// block -> destination channel, with the given partial-sum buffer and dW accumulators.
template <typename T, bool ACC, bool DW>
inline void conv_part(const ::granet::cpu::ConvTask<T>& t, int64_t part, T* partial, T* dw) {
  constexpr int64_t L = Simd<T>::lanes;
  const int64_t bb0 = t.parts[4 * part], bb1 = t.parts[4 * part + 1];
  const int64_t c0 = t.parts[4 * part + 2], c1 = t.parts[4 * part + 3];
  for (int64_t bb = bb0; bb < bb1; ++bb) {
    const T* s = t.src + bb * t.src_bb;
    for (int64_t i = 0; i < t.n_tiles; ++i) {
      const int32_t* tile = t.tiles + 4 * i;
      const int64_t dp = tile[1];
      const T* x = nullptr;
      int64_t x_ch = 0;
      if constexpr (DW) {
        if (!t.pixel_lanes) {
          x = t.xt + bb * t.xt_bb + dp * L;
          x_ch = t.xt_ch;
        } else if (!tile[3]) {
          x = t.xt + bb * t.xt_bb + dp;
          x_ch = t.xt_ch;
        } else {
          x = t.xtail + bb * t.n_dst * L;
          x_ch = L;
        }
      }
      conv_tile_dispatch<T, ACC, DW>(tile[2], t, s + tile[0], bb, dp, x, x_ch, partial, dw, c0, c1);
    }
  }
}

// Loops of one pass over the parts (in batch-block order, so that concurrent parts share their
// source).
// Without dW the parts are taken dynamically: every output element is written by exactly one part,
// so the result does not depend on which thread does what (partial sums are per-thread scratch).
// With dW the accumulators are summed by the host, and a float sum must not depend on timing (resumed
// runs must be bit-identical): part p always goes into the accumulators of slot p mod n_threads, and
// a slot's parts are done in order by one thread. The result is then fixed by the parts and
// n_threads alone, whatever the schedule, the team's actual size or the threads' timing. (A dynamic
// schedule with per-thread accumulators, as this was before, changed dW by a few ulp from run to run.)
template <typename T, bool ACC, bool DW>
void conv_engine_impl(const ::granet::cpu::ConvTask<T>& t) {
  if constexpr (DW) {
    const int64_t slots = t.n_threads;
#pragma omp parallel for schedule(static, 1) num_threads(t.n_threads)
    for (int64_t slot = 0; slot < slots; ++slot) {
      T* partial = ACC ? t.partial + slot * t.partial_thread : nullptr;
      T* dw = t.dw + slot * t.dw_thread;
      for (int64_t part = slot; part < t.n_parts; part += slots) conv_part<T, ACC, DW>(t, part, partial, dw);
    }
  } else {
#pragma omp parallel for schedule(dynamic, 1) num_threads(t.n_threads)
    for (int64_t part = 0; part < t.n_parts; ++part) {
      T* partial = ACC ? t.partial + current_thread() * t.partial_thread : nullptr;
      conv_part<T, ACC, DW>(t, part, partial, nullptr);
    }
  }
}

// x [n][c][in_px] (contiguous) -> dst [ceil(n/L)][c][ch_stride][L]: pixel p of a plane takes
// x[.][.][map[p]] (zero where map[p] < 0; lanes past n are zero). Pixels past map_len are untouched.
// Runs of L pixels with consecutive map values go through an in-register L x L transpose.
template <typename T>
void conv_pack_impl(const T* x, T* dst, int64_t n, int64_t c, int64_t in_px, const int32_t* map, int64_t map_len,
                    int64_t ch_stride) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int64_t L = S::lanes;
  const int64_t nb = (n + L - 1) / L;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bb = 0; bb < nb; ++bb) {
    for (int64_t ch = 0; ch < c; ++ch) {
      T* d = dst + (bb * c + ch) * ch_stride * L;
      const int64_t lanes = min_i64(L, n - bb * L);
      const T* s[L];
      for (int64_t b = 0; b < L; ++b) s[b] = x + ((bb * L + (b < lanes ? b : 0)) * c + ch) * in_px;
      int64_t p = 0;
      for (; p + L <= map_len; p += L) {
        const int32_t m0 = map[p];
        bool run = m0 >= 0 && lanes == L;
        bool zeros = m0 < 0;
        for (int64_t k = 1; k < L; ++k) {
          run = run && map[p + k] == m0 + k;
          zeros = zeros && map[p + k] < 0;
        }
        if (run) {
          vec r[L];
#pragma GCC unroll 16
          for (int64_t b = 0; b < L; ++b) r[b] = S::load(s[b] + m0);
          transpose<T>(r);
#pragma GCC unroll 16
          for (int64_t k = 0; k < L; ++k) S::store(d + (p + k) * L, r[k]);
        } else if (zeros) {
          for (int64_t k = 0; k < L; ++k) S::store(d + (p + k) * L, vec{});
        } else {
          for (int64_t k = 0; k < L; ++k) {
            const int32_t m = map[p + k];
            for (int64_t b = 0; b < L; ++b) d[(p + k) * L + b] = (m >= 0 && b < lanes) ? s[b][m] : T(0);
          }
        }
      }
      for (; p < map_len; ++p) {
        const int32_t m = map[p];
        for (int64_t b = 0; b < L; ++b) d[p * L + b] = (m >= 0 && b < lanes) ? s[b][m] : T(0);
      }
    }
  }
}

}  // namespace

// Entry points, T = float or double.
template <typename T>
inline int64_t conv_lanes() {
  return Simd<T>::lanes;
}
template <typename T>
inline void conv_pack(const T* x, T* dst, int64_t n, int64_t c, int64_t in_px, const int32_t* map, int64_t map_len,
                      int64_t ch_stride) {
  conv_pack_impl<T>(x, dst, n, c, in_px, map, map_len, ch_stride);
}
template <typename T>
inline void conv_engine(const ::granet::cpu::ConvTask<T>& t, bool acc, bool dw) {
  if (acc && dw) conv_engine_impl<T, true, true>(t);
  else if (acc) conv_engine_impl<T, true, false>(t);
  else if (dw) conv_engine_impl<T, false, true>(t);
}

}  // namespace GRANET_ISA
}  // namespace cpu
}  // namespace granet

#undef GRANET_CONV_LANES2
#undef GRANET_CONV_LANES4
#undef GRANET_CONV_LANES8
#undef GRANET_CONV_LANES16
#undef GRANET_CONV_SHUFFLE2
