// Selection kernels (global magnitude threshold, regrowth), compiled once per ISA by for_each_isa.h
// (namespace granet::cpu::GRANET_ISA). Plain C++ only, plus <immintrin.h> intrinsics that
// selection.cpp includes before this header (they are enabled by each copy's target pragma).
//
// Everything works on "keys": a float's bit pattern with the sign bit cleared. For IEEE floats the
// keys order exactly like the magnitudes (+0 and -0 share key 0), and every NaN has a key above
// +inf's, so NaN counts as the largest magnitude (as torch.sort / torch.kthvalue order it).
//
// Kernels here walk one contiguous segment of one tensor; selection.cpp splits the tensors into
// segments, runs them (OpenMP) and does the bookkeeping:
//   key_histogram     pass 1: counts of the keys' high bits (key >> shift), several sub-histograms
//                     so that runs of equal buckets do not serialise on one counter
//   compress_bucket   pass 2: the keys of the members of one bucket, appended to a list
//   bracket_pass      one-pass variant: given a bracket [lo, hi] (from a sample) that should hold the
//                     k-th largest key, count the keys above hi and compress those inside
//   emit_selected     regrow's last pass: the flat indices of the chosen positions, ascending

namespace granet {
namespace cpu {
namespace GRANET_ISA {

namespace {

template <typename Bits>
constexpr Bits sel_key_mask() {
  return static_cast<Bits>(static_cast<Bits>(~Bits(0)) >> 1);
}

#if defined(__x86_64__) && GRANET_VECTOR_BYTES >= 32
// Left-packing permutations for a compress step: entry m lists the lanes whose bit is set in m,
// first, in order (the rest are don't-care). For 8 x 32-bit lanes, and for 4 x 64-bit lanes
// expressed as pairs of 32-bit lanes.
struct PackTables {
  int32_t lanes8[256][8];
  int32_t lanes4[16][8];
};

constexpr PackTables make_pack_tables() {
  PackTables t{};
  for (int m = 0; m < 256; ++m) {
    int n = 0;
    for (int l = 0; l < 8; ++l)
      if (m & (1 << l)) t.lanes8[m][n++] = l;
    for (; n < 8; ++n) t.lanes8[m][n] = 0;
  }
  for (int m = 0; m < 16; ++m) {
    int n = 0;
    for (int l = 0; l < 4; ++l)
      if (m & (1 << l)) {
        t.lanes4[m][2 * n] = 2 * l;
        t.lanes4[m][2 * n + 1] = 2 * l + 1;
        ++n;
      }
    for (; n < 4; ++n) {
      t.lanes4[m][2 * n] = 0;
      t.lanes4[m][2 * n + 1] = 1;
    }
  }
  return t;
}

alignas(64) constexpr PackTables kPack = make_pack_tables();
#endif

}  // namespace

// Pass 1. sub holds n_sub sub-histograms of `stride` uint32 counters each; element i counts in
// sub-histogram i % n_sub, bucket key >> shift, or bucket `masked_bucket` where mask[i] is true
// (mask may be null). The caller keeps every counter below 2^32.
template <typename Bits>
void key_histogram(const Bits* x, const bool* mask, int64_t n, int shift, uint32_t* sub, int64_t stride, int n_sub,
                   uint32_t masked_bucket) {
  constexpr Bits M = sel_key_mask<Bits>();
  uint32_t* h[4];
  for (int s = 0; s < 4; ++s) h[s] = sub + (s % n_sub) * stride;
  int64_t i = 0;
  if (mask == nullptr) {
    for (; i + 4 <= n; i += 4) {
      const uint32_t b0 = static_cast<uint32_t>(static_cast<Bits>(x[i] & M) >> shift);
      const uint32_t b1 = static_cast<uint32_t>(static_cast<Bits>(x[i + 1] & M) >> shift);
      const uint32_t b2 = static_cast<uint32_t>(static_cast<Bits>(x[i + 2] & M) >> shift);
      const uint32_t b3 = static_cast<uint32_t>(static_cast<Bits>(x[i + 3] & M) >> shift);
      ++h[0][b0];
      ++h[1][b1];
      ++h[2][b2];
      ++h[3][b3];
    }
    for (; i < n; ++i) ++h[0][static_cast<uint32_t>(static_cast<Bits>(x[i] & M) >> shift)];
  } else {
    // Branch-free select of the bucket (a branch on a random mask mispredicts).
    auto bucket_of = [&](int64_t j) {
      const uint32_t v = static_cast<uint32_t>(static_cast<Bits>(x[j] & M) >> shift);
      const uint32_t sel = 0u - static_cast<uint32_t>(mask[j]);
      return (v & ~sel) | (masked_bucket & sel);
    };
    for (; i + 4 <= n; i += 4) {
      const uint32_t b0 = bucket_of(i), b1 = bucket_of(i + 1), b2 = bucket_of(i + 2), b3 = bucket_of(i + 3);
      ++h[0][b0];
      ++h[1][b1];
      ++h[2][b2];
      ++h[3][b3];
    }
    for (; i < n; ++i) ++h[0][bucket_of(i)];
  }
}

// Pass 2. Appends to out the keys k of the elements with k >> shift == bucket (and mask[i] false,
// where mask is given); returns how many. out needs room for that count plus 8 (vector stores
// write whole vectors past the count).
template <typename Bits>
int64_t compress_bucket(const Bits* x, const bool* mask, int64_t n, int shift, Bits bucket, Bits* out) {
  constexpr Bits M = sel_key_mask<Bits>();
  int64_t m = 0, i = 0;
#if defined(__x86_64__) && GRANET_VECTOR_BYTES >= 32
  if constexpr (sizeof(Bits) == 4) {
    const __m256i km = _mm256_set1_epi32(static_cast<int32_t>(M));
    const __m256i want = _mm256_set1_epi32(static_cast<int32_t>(bucket));
    const __m128i sh = _mm_cvtsi32_si128(shift);
    for (; i + 8 <= n; i += 8) {
      const __m256i key = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), km);
      __m256i hit = _mm256_cmpeq_epi32(_mm256_srl_epi32(key, sh), want);
      if (mask != nullptr) {
        int64_t m8;
        __builtin_memcpy(&m8, mask + i, 8);
        const __m256i mk = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(m8));
        hit = _mm256_andnot_si256(_mm256_cmpgt_epi32(mk, _mm256_setzero_si256()), hit);
      }
      const int bits = _mm256_movemask_ps(_mm256_castsi256_ps(hit));
      const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPack.lanes8[bits]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m), _mm256_permutevar8x32_epi32(key, perm));
      m += __builtin_popcount(static_cast<unsigned>(bits));
    }
  } else if constexpr (sizeof(Bits) == 8) {
    const __m256i km = _mm256_set1_epi64x(static_cast<int64_t>(M));
    const __m256i want = _mm256_set1_epi64x(static_cast<int64_t>(bucket));
    const __m128i sh = _mm_cvtsi32_si128(shift);
    for (; i + 4 <= n; i += 4) {
      const __m256i key = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), km);
      __m256i hit = _mm256_cmpeq_epi64(_mm256_srl_epi64(key, sh), want);
      if (mask != nullptr) {
        int32_t m4;
        __builtin_memcpy(&m4, mask + i, 4);
        const __m256i mk = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(m4));
        hit = _mm256_andnot_si256(_mm256_cmpgt_epi64(mk, _mm256_setzero_si256()), hit);
      }
      const int bits = _mm256_movemask_pd(_mm256_castsi256_pd(hit));
      const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPack.lanes4[bits]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m), _mm256_permutevar8x32_epi32(key, perm));
      m += __builtin_popcount(static_cast<unsigned>(bits));
    }
  }
#endif
  // Tail (and the generic build): branch-free append; the slot past the count is scratch.
  if (mask == nullptr) {
    for (; i < n; ++i) {
      const Bits key = static_cast<Bits>(x[i] & M);
      out[m] = key;
      m += static_cast<Bits>(key >> shift) == bucket;
    }
  } else {
    for (; i < n; ++i) {
      const Bits key = static_cast<Bits>(x[i] & M);
      out[m] = key;
      m += (static_cast<Bits>(key >> shift) == bucket) & !mask[i];
    }
  }
  return m;
}

// One-pass bracket select over one segment: adds to *above the number of keys greater than hi, and
// appends to out the keys in [lo, hi] (room for their count plus 8); returns how many it appended.
// Positions where mask (may be null) is true are skipped.
template <typename Bits>
int64_t bracket_pass(const Bits* x, const bool* mask, int64_t n, Bits lo, Bits hi, Bits* out, int64_t* above) {
  constexpr Bits M = sel_key_mask<Bits>();
  int64_t m = 0, i = 0, over = 0;
#if defined(__x86_64__) && GRANET_VECTOR_BYTES >= 32
  // Keys are below 2^(bits-1), so signed compares order them; lo - 1 wraps to -1 for lo = 0.
  if constexpr (sizeof(Bits) == 4) {
    const __m256i km = _mm256_set1_epi32(static_cast<int32_t>(M));
    const __m256i below = _mm256_set1_epi32(static_cast<int32_t>(static_cast<Bits>(lo - 1)));
    const __m256i top = _mm256_set1_epi32(static_cast<int32_t>(hi));
    __m256i count = _mm256_setzero_si256();
    for (; i + 8 <= n; i += 8) {
      const __m256i key = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), km);
      __m256i gt = _mm256_cmpgt_epi32(key, top);
      __m256i in = _mm256_andnot_si256(gt, _mm256_cmpgt_epi32(key, below));
      if (mask != nullptr) {
        int64_t m8;
        __builtin_memcpy(&m8, mask + i, 8);
        const __m256i off = _mm256_cmpgt_epi32(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(m8)), _mm256_setzero_si256());
        gt = _mm256_andnot_si256(off, gt);
        in = _mm256_andnot_si256(off, in);
      }
      count = _mm256_sub_epi32(count, gt);
      const int bits = _mm256_movemask_ps(_mm256_castsi256_ps(in));
      const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPack.lanes8[bits]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m), _mm256_permutevar8x32_epi32(key, perm));
      m += __builtin_popcount(static_cast<unsigned>(bits));
    }
    int32_t lanes[8];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes), count);
    for (int l = 0; l < 8; ++l) over += lanes[l];
  } else if constexpr (sizeof(Bits) == 8) {
    const __m256i km = _mm256_set1_epi64x(static_cast<int64_t>(M));
    const __m256i below = _mm256_set1_epi64x(static_cast<int64_t>(static_cast<Bits>(lo - 1)));
    const __m256i top = _mm256_set1_epi64x(static_cast<int64_t>(hi));
    __m256i count = _mm256_setzero_si256();
    for (; i + 4 <= n; i += 4) {
      const __m256i key = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), km);
      __m256i gt = _mm256_cmpgt_epi64(key, top);
      __m256i in = _mm256_andnot_si256(gt, _mm256_cmpgt_epi64(key, below));
      if (mask != nullptr) {
        int32_t m4;
        __builtin_memcpy(&m4, mask + i, 4);
        const __m256i off = _mm256_cmpgt_epi64(_mm256_cvtepu8_epi64(_mm_cvtsi32_si128(m4)), _mm256_setzero_si256());
        gt = _mm256_andnot_si256(off, gt);
        in = _mm256_andnot_si256(off, in);
      }
      count = _mm256_sub_epi64(count, gt);
      const int bits = _mm256_movemask_pd(_mm256_castsi256_pd(in));
      const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPack.lanes4[bits]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m), _mm256_permutevar8x32_epi32(key, perm));
      m += __builtin_popcount(static_cast<unsigned>(bits));
    }
    int64_t lanes[4];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes), count);
    for (int l = 0; l < 4; ++l) over += lanes[l];
  }
#endif
  for (; i < n; ++i) {
    const Bits key = static_cast<Bits>(x[i] & M);
    const bool open = mask == nullptr || !mask[i];
    out[m] = key;
    over += open & (key > hi);
    m += open & (key >= lo) & (key <= hi);
  }
  *above += over;
  return m;
}

// Regrow's last pass over one segment starting at flat index `base`: appends to out (room for
// `room` entries; nothing is written past it) the index of every position with mask false and key
// above t, and of the first `*ties_left` such positions with key equal to t (decrementing
// *ties_left). Returns how many were appended. Ascending by construction. Few positions qualify
// (k of n): whole vectors are tested at once and only the rare hits take the scalar path.
template <typename Bits>
int64_t emit_selected(const Bits* x, const bool* mask, int64_t n, int64_t base, Bits t, int64_t* ties_left,
                      int64_t* out, int64_t room) {
  constexpr Bits M = sel_key_mask<Bits>();
  int64_t m = 0, left = *ties_left, i = 0;
  auto visit = [&](int64_t j) {
    const Bits key = static_cast<Bits>(x[j] & M);
    if (mask[j] || key < t) return;
    if (key == t) {
      if (left == 0) return;
      --left;
    }
    if (m < room) out[m++] = base + j;
  };
#if defined(__x86_64__) && GRANET_VECTOR_BYTES >= 32
  if constexpr (sizeof(Bits) == 4) {
    const __m256i km = _mm256_set1_epi32(static_cast<int32_t>(M));
    const __m256i below = _mm256_set1_epi32(static_cast<int32_t>(static_cast<Bits>(t - 1)));
    for (; i + 8 <= n; i += 8) {
      const __m256i key = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), km);
      int64_t m8;
      __builtin_memcpy(&m8, mask + i, 8);
      const __m256i mk = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(m8));
      const __m256i hit = _mm256_andnot_si256(_mm256_cmpgt_epi32(mk, _mm256_setzero_si256()),
                                              _mm256_cmpgt_epi32(key, below));
      unsigned bits = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(hit)));
      while (bits) {
        visit(i + __builtin_ctz(bits));
        bits &= bits - 1;
      }
    }
  } else if constexpr (sizeof(Bits) == 8) {
    const __m256i km = _mm256_set1_epi64x(static_cast<int64_t>(M));
    const __m256i below = _mm256_set1_epi64x(static_cast<int64_t>(static_cast<Bits>(t - 1)));
    for (; i + 4 <= n; i += 4) {
      const __m256i key = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), km);
      int32_t m4;
      __builtin_memcpy(&m4, mask + i, 4);
      const __m256i mk = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(m4));
      const __m256i hit = _mm256_andnot_si256(_mm256_cmpgt_epi64(mk, _mm256_setzero_si256()),
                                              _mm256_cmpgt_epi64(key, below));
      unsigned bits = static_cast<unsigned>(_mm256_movemask_pd(_mm256_castsi256_pd(hit)));
      while (bits) {
        visit(i + __builtin_ctz(bits));
        bits &= bits - 1;
      }
    }
  }
#endif
  for (; i < n; ++i) visit(i);
  *ties_left = left;
  return m;
}

}  // namespace GRANET_ISA
}  // namespace cpu
}  // namespace granet
