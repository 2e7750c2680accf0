// CPU selection ops of the pruning engine: the exact k-th largest magnitude over a list of tensors
// (global magnitude pruning) and regrowth (the k largest |score| among a layer's inactive positions).
//
// Radix select on keys (bit pattern, sign bit cleared; see selection_impl.h), never concatenating:
//   pass 1  histogram of the keys' high bits over every tensor in place (12 bits for fp32, 14 for
//           fp64; for fp16/bf16 all 15 key bits, so the histogram alone is exact);
//           the bucket holding the k-th largest key follows from the counts;
//   pass 2  the members of that bucket (about 1% of the elements at typical k) are compressed into
//           a candidate list with vector compares;
//   finish  radix select on the candidate list, 11 bits at a time.
// Two reads of the data in all. With enough data, one read usually suffices: a strided sample of
// 2^16 keys (with a mask: of the unmasked positions) brackets the k-th largest key, [lo, hi], wide
// enough to hold it at ~5 sigma; one pass counts the keys above hi and compresses those inside; if
// count_above < k <= count_above + inside, the answer is among the compressed keys, else (a bad
// sample, heavy ties making the bracket too full) the radix select above runs.
// NaN has the largest key: it counts as the largest magnitude (the order torch.sort and
// torch.kthvalue use), so a list with at least k NaNs has threshold NaN.
// OpenMP splits the tensors into segments; each thread histograms and compresses its own run of
// segments.
#include <ATen/ATen.h>

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu/isa.h"
#include "cpu/workspace.h"
#include "granet.h"

#define GRANET_ISA_IMPL "cpu/selection_impl.h"
#include "cpu/for_each_isa.h"

namespace granet {

namespace {

using cpu::Scratch;

// Elements per segment: the unit of work of a thread (4 MB of fp32).
constexpr int64_t kSegment = int64_t(1) << 20;

template <typename Bits>
struct Segment {
  const Bits* x;
  const bool* mask;  // null for topk_threshold
  int64_t n;
  int64_t base;  // flat index of x[0] (regrow)
};

// The k-th largest key, and how many of the keys equal to it are among the k largest (the rest of
// the k are strictly larger).
template <typename Bits>
struct Selected {
  Bits key;
  int64_t ties;
};

// GRANET_SELECT_BRACKET=0 turns the one-pass bracket off (tests and benchmarks of the radix path).
bool bracket_enabled() {
  static const bool on = [] {
    const char* env = std::getenv("GRANET_SELECT_BRACKET");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return on;
}

// First-pass digit width per key type, and the number of sub-histograms.
template <typename Bits>
constexpr int first_bits() {
  return sizeof(Bits) == 2 ? 15 : sizeof(Bits) == 4 ? 12 : 14;
}
template <typename Bits>
constexpr int sub_histograms() {
  return sizeof(Bits) == 2 ? 1 : 4;
}

// k-th largest (k >= 1, 1 = largest) of n keys that agree above their low `low_bits` bits; reorders
// and overwrites c. On return *k is the rank among the keys equal to the result.
template <typename Bits>
Bits finish_select(Bits* c, int64_t n, int64_t* k, int low_bits) {
  constexpr int kDigit = 11;
  std::vector<int64_t> hist(int64_t(1) << kDigit);
  while (low_bits > 0 && n > 1) {
    const int d = low_bits < kDigit ? low_bits : kDigit;
    const int shift = low_bits - d;
    const Bits dmask = static_cast<Bits>((Bits(1) << d) - 1);
    std::fill(hist.begin(), hist.begin() + (int64_t(1) << d), 0);
    for (int64_t i = 0; i < n; ++i) ++hist[static_cast<int64_t>(static_cast<Bits>(c[i] >> shift) & dmask)];
    int64_t above = 0, digit = (int64_t(1) << d) - 1;
    for (; digit > 0; --digit) {
      if (above + hist[digit] >= *k) break;
      above += hist[digit];
    }
    *k -= above;
    int64_t m = 0;
    for (int64_t i = 0; i < n; ++i) {
      const Bits v = c[i];
      c[m] = v;
      m += static_cast<int64_t>(static_cast<Bits>(v >> shift) & dmask) == digit;
    }
    n = m;
    low_bits = shift;
  }
  TORCH_INTERNAL_ASSERT(n >= 1 && *k >= 1 && *k <= n, "selection: lost the k-th key");
  return c[0];
}

// The segments split into contiguous runs, balanced by element count, one per thread.
struct Runs {
  int threads = 1;
  std::vector<size_t> first;  // run t is segments [first[t], first[t + 1])
  std::vector<int64_t> elems;
  int64_t total = 0;
};

template <typename Bits>
Runs split_runs(const std::vector<Segment<Bits>>& segs) {
  Runs r;
  for (const auto& s : segs) r.total += s.n;
  r.threads = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>({static_cast<int64_t>(omp_get_max_threads()), static_cast<int64_t>(segs.size()),
                            (r.total + kSegment - 1) / kSegment})));
  r.first.assign(r.threads + 1, segs.size());
  r.first[0] = 0;
  int64_t seen = 0;
  int g = 1;
  for (size_t i = 0; i < segs.size() && g < r.threads; ++i) {
    seen += segs[i].n;
    while (g < r.threads && seen * r.threads >= r.total * g) r.first[g++] = i + 1;
  }
  r.elems.assign(r.threads, 0);
  for (int t = 0; t < r.threads; ++t)
    for (size_t i = r.first[t]; i < r.first[t + 1]; ++i) r.elems[t] += segs[i].n;
  return r;
}

// Below this many elements the radix select's second pass costs little: no bracket.
constexpr int64_t kBracketMin = int64_t(1) << 18;
// Sample size of the bracket (about; one key every total / kSample elements).
constexpr int64_t kSample = int64_t(1) << 16;

// The one-pass bracket select; nothing when the bracket misses (then the radix select runs).
template <typename Bits>
std::optional<Selected<Bits>> bracket_select(const std::vector<Segment<Bits>>& segs, const Runs& runs, int64_t k,
                                             const char* op) {
  constexpr Bits M = static_cast<Bits>(static_cast<Bits>(~Bits(0)) >> 1);
  constexpr int kBits = 8 * static_cast<int>(sizeof(Bits));
  const int64_t total = runs.total;
  const int64_t step = std::max<int64_t>(1, total / kSample);
  std::vector<Bits> sample;
  sample.reserve(total / step + 1);
  int64_t probes = 0;
  {
    int64_t next = step / 2, start = 0;
    for (const auto& s : segs) {
      for (; next < start + s.n; next += step, ++probes)
        if (s.mask == nullptr || !s.mask[next - start]) sample.push_back(static_cast<Bits>(s.x[next - start] & M));
      start += s.n;
    }
  }
  const int64_t ns = static_cast<int64_t>(sample.size());
  if (ns < 64) return std::nullopt;
  // Rank of the k-th largest in the sample (0 = largest), +- 5 sigma of its binomial spread. With a
  // mask, the number of eligible elements is estimated from the sample too.
  const double eligible = static_cast<double>(total) * static_cast<double>(ns) / static_cast<double>(probes);
  const double q = std::min(1.0, static_cast<double>(k) / eligible);
  const double r = q * static_cast<double>(ns);
  const double delta = 5.0 * std::sqrt(static_cast<double>(ns) * q * (1.0 - q)) + 16.0;
  const int64_t ihi = static_cast<int64_t>(std::floor(r - delta));
  const int64_t ilo = static_cast<int64_t>(std::ceil(r + delta));
  Bits hi = M, lo = 0;
  if (ilo < ns) {
    std::nth_element(sample.begin(), sample.begin() + ilo, sample.end(), std::greater<Bits>());
    lo = sample[ilo];
  }
  if (ihi >= 0) {
    // The keys before position ilo are the largest ilo keys: select within them.
    const auto end = ilo < ns ? sample.begin() + ilo : sample.end();
    std::nth_element(sample.begin(), sample.begin() + ihi, end, std::greater<Bits>());
    hi = sample[ihi];
  }
  // Expected members: (ilo - ihi) / ns of the total. Allow 2x that (ties can crowd the bracket)
  // before giving up on it; each thread's buffer has a segment of slack past the limit.
  const double expect = static_cast<double>(std::min(ilo, ns) - std::max<int64_t>(ihi, 0) + 1) /
                        static_cast<double>(ns) * eligible;
  const int64_t limit = std::min<int64_t>(total, static_cast<int64_t>(2.0 * expect) + 4096);
  const int threads = runs.threads;
  std::vector<Bits*> lists(threads, nullptr);
  std::vector<int64_t> counts(threads, 0), aboves(threads, 0);
  std::vector<char> overflow(threads, 0);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    Bits* out = cpu::scratch_of<Bits>(Scratch::b, std::min(limit + kSegment, runs.elems[t]) + 8);
    int64_t m = 0, above = 0;
    for (size_t i = runs.first[t]; i < runs.first[t + 1]; ++i) {
      const Segment<Bits>& s = segs[i];
      m += GRANET_ISA_CALL(bracket_pass<Bits>, s.x, s.mask, s.n, lo, hi, out + m, &above);
      if (m > limit) {
        overflow[t] = 1;
        break;
      }
    }
    lists[t] = out;
    counts[t] = m;
    aboves[t] = above;
  }
  int64_t above = 0, n = 0;
  for (int t = 0; t < threads; ++t) {
    if (overflow[t]) return std::nullopt;
    above += aboves[t];
    n += counts[t];
  }
  if (!(above < k && k <= above + n)) return std::nullopt;
  Bits* cand = lists[0];
  if (threads > 1) {
    cand = cpu::scratch_of<Bits>(Scratch::c, n + 8);
    int64_t at = 0;
    for (int t = 0; t < threads; ++t) {
      std::memcpy(cand + at, lists[t], sizeof(Bits) * counts[t]);
      at += counts[t];
    }
  }
  int64_t rank = k - above;
  const Bits key = finish_select<Bits>(cand, n, &rank, kBits - 1);
  (void)op;
  return Selected<Bits>{key, rank};
}

// Radix select over the segments (k-th largest key among the unmasked elements). Raises when k
// exceeds their number, `what` naming them in the message.
template <typename Bits>
Selected<Bits> select_kth(const std::vector<Segment<Bits>>& segs, int64_t k, const char* op, const char* what) {
  constexpr int B = first_bits<Bits>();
  constexpr int kBits = 8 * static_cast<int>(sizeof(Bits));
  constexpr int shift = kBits - 1 - B;
  constexpr int64_t NB = int64_t(1) << B;
  constexpr int64_t stride = NB + 16;  // bucket NB counts masked positions
  constexpr int nsub = sub_histograms<Bits>();

  const Runs runs = split_runs(segs);
  const int threads = runs.threads;
  const std::vector<size_t>& first = runs.first;
  const std::vector<int64_t>& run_elems = runs.elems;
  if constexpr (shift > 0) {
    if (runs.total >= kBracketMin && k >= 1 && k <= runs.total && bracket_enabled()) {
      if (auto found = bracket_select(segs, runs, k, op)) return *found;
    }
  }

  // Pass 1.
  std::vector<uint64_t> hist(NB + 1, 0);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    uint32_t* sub = cpu::scratch_of<uint32_t>(Scratch::a, nsub * stride);
    std::memset(sub, 0, sizeof(uint32_t) * nsub * stride);
    std::vector<uint64_t> mine(NB + 1, 0);
    auto flush = [&] {
      for (int s = 0; s < nsub; ++s)
        for (int64_t b = 0; b <= NB; ++b) mine[b] += sub[s * stride + b];
      std::memset(sub, 0, sizeof(uint32_t) * nsub * stride);
    };
    int64_t pending = 0;
    for (size_t i = first[t]; i < first[t + 1]; ++i) {
      const Segment<Bits>& s = segs[i];
      if (pending + s.n >= (int64_t(1) << 32)) {
        flush();
        pending = 0;
      }
      GRANET_ISA_CALL(key_histogram<Bits>, s.x, s.mask, s.n, shift, sub, stride, nsub, static_cast<uint32_t>(NB));
      pending += s.n;
    }
    flush();
#pragma omp critical(granet_selection_hist)
    for (int64_t b = 0; b <= NB; ++b) hist[b] += mine[b];
  }

  int64_t open = 0;
  for (int64_t b = 0; b < NB; ++b) open += static_cast<int64_t>(hist[b]);
  TORCH_CHECK_VALUE(k >= 1 && k <= open, op, ": k = ", k, " exceeds the number of ", what, " (", open, ")");

  int64_t above = 0, bucket = NB - 1;
  for (; bucket > 0; --bucket) {
    if (above + static_cast<int64_t>(hist[bucket]) >= k) break;
    above += static_cast<int64_t>(hist[bucket]);
  }
  int64_t rank = k - above;
  if constexpr (shift == 0) {
    return {static_cast<Bits>(bucket), rank};
  } else {
    // Pass 2: every thread compresses its run's members of the bucket.
    const int64_t members = static_cast<int64_t>(hist[bucket]);
    std::vector<Bits*> lists(threads, nullptr);
    std::vector<int64_t> counts(threads, 0);
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num();
      Bits* out = cpu::scratch_of<Bits>(Scratch::b, std::min(members, run_elems[t]) + 8);
      int64_t m = 0;
      for (size_t i = first[t]; i < first[t + 1]; ++i) {
        const Segment<Bits>& s = segs[i];
        m += GRANET_ISA_CALL(compress_bucket<Bits>, s.x, s.mask, s.n, shift, static_cast<Bits>(bucket), out + m);
      }
      lists[t] = out;
      counts[t] = m;
    }
    Bits* cand = lists[0];
    int64_t n = counts[0];
    if (threads > 1) {
      cand = cpu::scratch_of<Bits>(Scratch::c, members + 8);
      n = 0;
      for (int t = 0; t < threads; ++t) {
        std::memcpy(cand + n, lists[t], sizeof(Bits) * counts[t]);
        n += counts[t];
      }
    }
    TORCH_INTERNAL_ASSERT(n == members, op, ": pass 2 found ", n, " members of the bucket, pass 1 counted ", members);
    const Bits key = finish_select<Bits>(cand, n, &rank, shift);
    return {key, rank};
  }
}

template <typename Bits>
void add_segments(std::vector<Segment<Bits>>& segs, const void* data, const bool* mask, int64_t n) {
  const Bits* x = static_cast<const Bits*>(data);
  for (int64_t i = 0; i < n; i += kSegment)
    segs.push_back({x + i, mask == nullptr ? nullptr : mask + i, std::min(kSegment, n - i), i});
}

bool selection_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

template <typename Bits>
at::Tensor topk_threshold_impl(at::TensorList tensors, int64_t k) {
  std::vector<Segment<Bits>> segs;
  for (const at::Tensor& t : tensors) add_segments<Bits>(segs, t.data_ptr(), nullptr, t.numel());
  const Selected<Bits> s = select_kth<Bits>(segs, k, "granet::_native_topk_threshold", "elements of tensors");
  at::Tensor out = at::empty({}, tensors[0].options());
  std::memcpy(out.data_ptr(), &s.key, sizeof(Bits));
  return out;
}

template <typename Bits>
at::Tensor regrow_impl(const at::Tensor& mask, const at::Tensor& score, int64_t k) {
  constexpr const char* op = "granet::_native_regrow";
  const int64_t n = score.numel();
  std::vector<Segment<Bits>> segs;
  add_segments<Bits>(segs, score.data_ptr(), mask.data_ptr<bool>(), n);
  const Selected<Bits> s = select_kth<Bits>(segs, k, op, "inactive (False) positions of mask");
  at::Tensor out = at::empty({k}, mask.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  int64_t done = 0, ties_left = s.ties;
  for (const Segment<Bits>& seg : segs) {
    if (done == k) break;
    done += GRANET_ISA_CALL(emit_selected<Bits>, seg.x, seg.mask, seg.n, seg.base, s.key, &ties_left, o + done,
                            k - done);
  }
  TORCH_INTERNAL_ASSERT(done == k, op, ": selected ", done, " positions, expected ", k);
  return out;
}

}  // namespace

at::Tensor topk_threshold_cpu(at::TensorList tensors, int64_t k) {
  constexpr const char* op = "granet::_native_topk_threshold";
  TORCH_CHECK_VALUE(!tensors.empty(), op, ": tensors must be a non-empty list of tensors");
  const at::ScalarType dtype = tensors[0].scalar_type();
  int64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK_VALUE(t.defined(), op, ": tensors[", i, "] is undefined");
    TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": tensors[", i, "] is on ", t.device(),
                      "; the CPU kernel needs CPU tensors");
    TORCH_CHECK_TYPE(selection_dtype(t.scalar_type()), op, ": tensors[", i,
                     "] must have dtype float16, bfloat16, float32 or float64; got ", t.scalar_type());
    TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": tensors[", i, "] has dtype ", t.scalar_type(),
                     " but tensors[0] has ", dtype, "; they must match");
    TORCH_CHECK_VALUE(t.is_contiguous(), op, ": tensors[", i, "] must be contiguous");
    total += t.numel();
  }
  TORCH_CHECK_VALUE(k >= 1 && k <= total, op, ": k must be in [1, ", total,
                    "] (the total element count of tensors), got ", k);
  switch (dtype) {
    case at::kFloat: return topk_threshold_impl<uint32_t>(tensors, k);
    case at::kDouble: return topk_threshold_impl<uint64_t>(tensors, k);
    default: return topk_threshold_impl<uint16_t>(tensors, k);
  }
}

at::Tensor regrow_cpu(const at::Tensor& mask, const at::Tensor& score, int64_t k) {
  constexpr const char* op = "granet::_native_regrow";
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, op, ": mask must have dtype bool; got ", mask.scalar_type());
  TORCH_CHECK_TYPE(selection_dtype(score.scalar_type()), op,
                   ": score must have dtype float16, bfloat16, float32 or float64; got ", score.scalar_type());
  TORCH_CHECK_VALUE(mask.sizes() == score.sizes(), op, ": score must have mask's shape ", mask.sizes(), ", got ",
                    score.sizes());
  TORCH_CHECK_VALUE(mask.device().is_cpu() && score.device().is_cpu(), op,
                    ": the CPU kernel needs CPU tensors; mask is on ", mask.device(), ", score on ", score.device());
  TORCH_CHECK_VALUE(mask.is_contiguous(), op, ": mask must be contiguous");
  TORCH_CHECK_VALUE(score.is_contiguous(), op, ": score must be contiguous");
  TORCH_CHECK_VALUE(k >= 0, op, ": k must be a non-negative integer, got ", k);
  TORCH_CHECK_VALUE(k <= mask.numel(), op, ": k = ", k, " exceeds the number of positions in mask (", mask.numel(),
                    ")");
  if (k == 0) return at::empty({0}, mask.options().dtype(at::kLong));
  switch (score.scalar_type()) {
    case at::kFloat: return regrow_impl<uint32_t>(mask, score, k);
    case at::kDouble: return regrow_impl<uint64_t>(mask, score, k);
    default: return regrow_impl<uint16_t>(mask, score, k);
  }
}

}  // namespace granet
