// CPU entry points of the sparse conv2d ops: checks, the pass plans (tiles, entries, packing maps),
// packing, ISA choice. The kernels are in conv_impl.h.
//
// Every pass is a direct convolution on batch-blocked planes [N/L][C][pixels][L] (L = one SIMD vector
// of batch lanes), reduced to one engine problem: destination pixels cut into tiles that stay in
// registers, and per destination channel a list of entries (source offset, weight).
//   forward: source = the zero-padded input; for stride > 1 each input plane is split into its
//            stride phases (rows φ, φ+s, ...), so every tile still reads contiguous runs.
//   dX:      source = the zero-padded dY, weights at "flipped" offsets; for stride > 1 the input
//            gradient is computed phase by phase (the input pixels ih ≡ φ mod stride), each phase a
//            stride-1 correlation with the nonzeros whose taps land on it.
//   dW:      fused into the dX pass: every entry also takes <x at the tile's pixels, loaded dY run>.
// Tile spaces: one tile per run of <= 14 pixels of a destination row ("row mode"), or, for small
// planes, runs over the rows flattened with the source's row pitch ("flat mode": the pixels past a
// row's end are computed and dropped; they read zeros or valid neighbours, never out of bounds).
// 1x1 convolutions with stride 1 and no padding skip the packing: their vectors are L consecutive
// pixels of the NCHW tensors themselves ("pixel lanes").
// Threads: work items (batch block x channel range); no shared writes. dW is accumulated per slot
// (work item i -> slot i mod threads, a slot's items in order on one thread) and the slots are summed
// in order at the end, so dW is bit-identical from run to run for a given thread count; the passes
// without dW take the items dynamically. Scratch buffers are reused across calls (per thread).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/isa.h"
#include "cpu/output_pool.h"
#include "granet.h"

#define GRANET_ISA_IMPL "cpu/conv_impl.h"
#include "cpu/for_each_isa.h"

namespace granet {

namespace {

constexpr const char* kOpForward = "granet::sparse_conv2d";
constexpr const char* kOpDx = "granet::sparse_conv2d_dx";
constexpr const char* kOpDw = "granet::sparse_conv2d_dw";
constexpr const char* kOpBackward = "granet::sparse_conv2d_backward";

// Source bytes of one channel block that should stay in L1 (32 KB) next to the tile's partial sums
// and the entries.
constexpr int64_t kL1SourceBudget = 24 * 1024;
// Entries per (channel block, destination channel) worth a block's fixed cost (see channel_blocks).
constexpr double kSegmentEntries = 12;

struct Geometry {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

int64_t conv_out_size(int64_t size, int64_t k, int64_t s, int64_t p, int64_t d) {
  const int64_t span = size + 2 * p - d * (k - 1) - 1;
  return span < 0 ? 0 : span / s + 1;
}

void check_pair(const char* op, const char* name, at::IntArrayRef v, int64_t minimum) {
  TORCH_CHECK_VALUE(v.size() == 2 && v[0] >= minimum && v[1] >= minimum, op, ": ", name, " must be 2 integers >= ",
                    minimum, ", got ", v);
}

Geometry check_geometry(const char* op, at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation) {
  check_pair(op, "kernel_size", kernel_size, 1);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  return {kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1]};
}

void check_cpu(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": the CPU kernel needs CPU tensors, but ", name, " is on ", t.device());
}

void check_float4d(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": ", name, " must be 4-D [N, C, H, W], got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
                    " must be float32 or float64, got ", t.scalar_type());
  check_cpu(op, name, t);
}

// Output spatial size; the input must be large enough for at least one output pixel.
std::pair<int64_t, int64_t> check_output_size(const char* op, int64_t h, int64_t w, const Geometry& g) {
  const int64_t ho = conv_out_size(h, g.kh, g.sh, g.ph, g.dh), wo = conv_out_size(w, g.kw, g.sw, g.pw, g.dw);
  TORCH_CHECK_VALUE(ho >= 1 && wo >= 1, op, ": input of spatial size (", h, ", ", w, ") is too small for kernel_size [",
                    g.kh, ", ", g.kw, "], padding [", g.ph, ", ", g.pw, "], dilation [", g.dh, ", ", g.dw,
                    "] (output would be [", ho, ", ", wo, "])");
  return {ho, wo};
}

// The filter bank: crow/col (int32, CSR over [C_out, C_in*kh*kw]) and, when given, values.
void check_filters(const char* op, const at::Tensor& crow, const at::Tensor& col, const at::Tensor* values,
                   const at::Tensor& like, int64_t c_in, const Geometry& g) {
  check_cpu(op, "crow_indices", crow);
  check_cpu(op, "col_indices", col);
  TORCH_CHECK_VALUE(col.dim() == 1, op, ": col_indices must be 1-D, got shape ", col.sizes());
  TORCH_CHECK_VALUE(col.scalar_type() == at::kInt, op, ": col_indices must be int32, got ", col.scalar_type());
  if (values != nullptr) {
    check_cpu(op, "values", *values);
    TORCH_CHECK_VALUE(values->dim() == 1 && values->numel() == col.numel(), op,
                      ": values must be 1-D with as many entries as col_indices (", col.numel(), "), got shape ",
                      values->sizes());
    TORCH_CHECK_VALUE(values->scalar_type() == like.scalar_type(), op, ": values dtype ", values->scalar_type(),
                      " does not match the data dtype ", like.scalar_type());
  }
  check_compressed_index(op, "crow_indices", crow, "col_indices", col, c_in * g.kh * g.kw);
}

// grad_output must be [N, C_out, H_out, W_out].
void check_grad_output(const char* op, const at::Tensor& grad, int64_t n, int64_t c_out, int64_t ho, int64_t wo) {
  check_float4d(op, "grad_output", grad);
  TORCH_CHECK_VALUE(grad.size(0) == n && grad.size(1) == c_out && grad.size(2) == ho && grad.size(3) == wo, op,
                    ": grad_output must have shape [", n, ", ", c_out, ", ", ho, ", ", wo,
                    "] for this input and filter bank, got ", grad.sizes());
}

// ---------------------------------------------------------------------------------------------
// Plans
// ---------------------------------------------------------------------------------------------

// Destination pixels of one pass: a rows x cols grid whose source runs have row pitch `pitch`.
struct TileSpace {
  int64_t rows = 0, cols = 0, q = 0, size = 0;  // q: tile-space row pitch; size: tile-space pixels
  int64_t max_width = 0;
  std::vector<int32_t> tiles;  // per tile: source element offset, destination pixel, width, tail flag
};

std::vector<int64_t> split_widths(int64_t total, int64_t wmax) {
  std::vector<int64_t> widths;
  if (total <= 0) return widths;
  const int64_t n = (total + wmax - 1) / wmax;
  for (int64_t i = 0; i < n; ++i) widths.push_back(total / n + (i < total % n ? 1 : 0));
  return widths;
}

int64_t tiles_cost(const std::vector<int64_t>& widths) {
  int64_t cost = 0;  // a tile narrower than 8 accumulators waits on the FMA latency; +3 per tile overhead
  for (int64_t w : widths) cost += std::max<int64_t>(w, 8) + 3;
  return cost;
}

void add_tile(TileSpace& ts, int64_t src, int64_t dst, int64_t width, bool tail = false) {
  ts.tiles.insert(ts.tiles.end(), {static_cast<int32_t>(src), static_cast<int32_t>(dst), static_cast<int32_t>(width),
                                   tail ? 1 : 0});
  ts.max_width = std::max(ts.max_width, width);
}

// Batch lanes: tiles of a rows x cols grid (row mode or flat mode, whichever costs less).
TileSpace make_tiles(int64_t rows, int64_t cols, int64_t pitch, int64_t wmax, int64_t lanes) {
  TileSpace ts;
  ts.rows = rows;
  ts.cols = cols;
  const std::vector<int64_t> row_widths = split_widths(cols, wmax);
  const int64_t span = (rows - 1) * pitch + cols;
  const std::vector<int64_t> flat_widths = split_widths(span, wmax);
  const bool flat = rows > 1 && tiles_cost(flat_widths) < rows * tiles_cost(row_widths);
  if (flat) {
    ts.q = pitch;
    int64_t f = 0;
    for (int64_t w : flat_widths) {
      add_tile(ts, f * lanes, f, w);
      f += w;
    }
  } else {
    ts.q = cols;
    for (int64_t k = 0; k < rows; ++k) {
      int64_t j = 0;
      for (int64_t w : row_widths) {
        add_tile(ts, (k * pitch + j) * lanes, k * cols + j, w);
        j += w;
      }
    }
  }
  ts.size = (rows - 1) * ts.q + cols;
  return ts;
}

// Pixel lanes: a plane of hw >= lanes pixels in vectors of `lanes` pixels; a plane that is not a
// multiple of lanes ends in a one-vector tail tile overlapping the previous vector.
TileSpace make_pixel_tiles(int64_t hw, int64_t wmax, int64_t lanes) {
  TileSpace ts;
  ts.rows = 1;
  ts.cols = ts.q = ts.size = hw;
  int64_t v = 0;
  for (int64_t w : split_widths(hw / lanes, wmax)) {
    add_tile(ts, v * lanes, v * lanes, w);
    v += w;
  }
  if (hw % lanes) add_tile(ts, hw - lanes, hw - lanes, 1, true);
  return ts;
}

// 1x1, stride 1, no padding: the NCHW tensors can be used as they are, with pixel lanes.
bool use_pixel_lanes(const Geometry& g, int64_t hw, int64_t lanes) {
  return g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && hw >= lanes;
}

// Stride 1 and a batch smaller than one vector of batch lanes (which would leave lanes idle: batch 1
// costs what batch L costs): pixel lanes over zero-padded planes instead (forward_padded_pixels).
// Measured (forward, 1 thread, AVX2 fp32, d = 0.1 / 0.3, ms, batch 1 / 2 / 4 / 7 against batch lanes'
// cost for any batch up to 8): 3x3 256->256 14x14 1.71 / 3.09 / 4.92 / 8.27 vs 6.86; 64->64 56x56
// 0.76 / 1.91 / 4.46 / 7.77 vs 9.49; 512->512 7x7 3.93 / 4.71 / 6.77 / 10.1 vs 13.4; 128->128 28x28
// 1.18 / 2.11 / 4.36 / 7.83 vs 7.78: pixel lanes up to half a vector of images.
bool use_padded_pixel_lanes(const Geometry& g, int64_t n, int64_t rows, int64_t pitch, int64_t lanes) {
  return g.sh == 1 && g.sw == 1 && 2 * n <= lanes && rows * pitch >= lanes;
}

// Tile space of the padded pixel-lane passes: `rows` destination rows at row pitch `pitch`, rounded
// up to whole vectors, in tiles of up to kConvMaxTile vectors.

// Pixels of one source channel that a tile of width w touches over all shifts.
int64_t footprint(std::vector<int64_t> shifts, int64_t w) {
  std::sort(shifts.begin(), shifts.end());
  int64_t covered = 0, end = std::numeric_limits<int64_t>::min();
  for (int64_t s : shifts) {
    const int64_t lo = std::max(s, end), hi = s + w;
    if (hi > lo) covered += hi - lo;
    end = std::max(end, hi);
  }
  return covered;
}

// Source channels per block: as many as keep a tile's footprint over one block within
// kL1SourceBudget, but at least enough for ~kSegmentEntries entries per (block, destination channel)
// at this density: at low density each segment's fixed cost (reloading and storing the tile's
// partial sums) would otherwise outweigh its few entries.
int64_t channel_blocks(int64_t channels, int64_t fp_px, int64_t pixel_bytes, int64_t nnz, int64_t n_dst) {
  if (channels <= 0) return 1;
  int64_t per_block = std::max<int64_t>(1, kL1SourceBudget / std::max<int64_t>(1, fp_px * pixel_bytes));
  // entries per (destination channel, source channel)
  const double rate = static_cast<double>(nnz) / static_cast<double>(std::max<int64_t>(1, n_dst * channels));
  if (rate > 0) per_block = std::max(per_block, static_cast<int64_t>(kSegmentEntries / rate));
  per_block = std::min(per_block, channels);
  return (channels + per_block - 1) / per_block;
}

// Channel stride (pixels) of a packed source: the plane, padded so that consecutive channels' tile
// footprints fall on different L1 sets (planes a multiple of 4 KB apart would all alias).
int64_t padded_channel_stride(int64_t plane_px, int64_t fp_px, int64_t pixel_bytes) {
  const int64_t period = std::max<int64_t>(1, 4096 / pixel_bytes);
  if (fp_px >= period || period == 1) return plane_px;
  const int64_t target = std::max<int64_t>(fp_px, 1) % period;
  const int64_t pad = ((target - plane_px % period) % period + period) % period;
  return plane_px + pad;
}

// The entries of one pass, grouped by (channel block, destination channel), in CSR order inside a
// group.
template <typename T>
struct Entries {
  std::vector<int32_t> seg, offs;
  std::vector<T> vals;
  std::vector<int32_t> nz;  // CSR position of each entry
  int64_t n_cb = 1, n_dst = 0;
};

// Nonzeros of one pass before grouping: key = channel block * n_dst + destination channel. All three
// fit int32: offsets are checked against the 32-bit limit, nonzeros are counted by int32 indices.
struct RawEntries {
  std::vector<int32_t> key, off, nz;
  RawEntries() = default;
  explicit RawEntries(int64_t n) : key(n), off(n), nz(n) {}  // n entries, written by set()
  void set(int64_t i, int64_t k, int64_t o, int64_t q) {
    key[i] = static_cast<int32_t>(k);
    off[i] = static_cast<int32_t>(o);
    nz[i] = static_cast<int32_t>(q);
  }
  void reserve(int64_t n) {
    key.reserve(n);
    off.reserve(n);
    nz.reserve(n);
  }
  void add(int64_t k, int64_t o, int64_t q) {
    key.push_back(static_cast<int32_t>(k));
    off.push_back(static_cast<int32_t>(o));
    nz.push_back(static_cast<int32_t>(q));
  }
};

// The source channel and tap of every filter column (ci * taps + rs), and a channel -> block table:
// lookups instead of 64-bit divisions per nonzero, which were most of the plan-building time (and a
// batch-1 forward at d = 0.3 spent ~40% of its time building its plan).
struct FilterColumns {
  std::vector<int32_t> channel, tap;
  FilterColumns(int64_t channels, int64_t taps) : channel(channels * taps), tap(channels * taps) {
    for (int64_t c = 0; c < channels * taps; ++c) {
      channel[c] = static_cast<int32_t>(c / taps);
      tap[c] = static_cast<int32_t>(c % taps);
    }
  }
};
std::vector<int32_t> block_of_channel(int64_t channels, int64_t cb_size) {
  std::vector<int32_t> block(channels);
  for (int64_t c = 0; c < channels; ++c) block[c] = static_cast<int32_t>(c / cb_size);
  return block;
}

// Counting sort of the raw entries by key (stable: CSR order inside a group).
template <typename T>
Entries<T> make_entries(const RawEntries& raw, int64_t n_cb, int64_t n_dst, const T* values) {
  Entries<T> e;
  e.n_cb = n_cb;
  e.n_dst = n_dst;
  const int64_t n_keys = n_cb * n_dst, count = static_cast<int64_t>(raw.key.size());
  e.seg.assign(n_keys + 1, 0);
  for (int32_t k : raw.key) e.seg[k + 1] += 1;
  for (int64_t k = 0; k < n_keys; ++k) e.seg[k + 1] += e.seg[k];
  std::vector<int32_t> fill(e.seg.begin(), e.seg.end() - 1);
  e.offs.resize(count);
  e.nz.resize(count);
  if (values != nullptr) e.vals.resize(count);
  // Raw entries come in runs of one key (a filter row's nonzeros of one channel block): moved a run
  // at a time, not through a fill[key]++ per entry (a store-to-load chain).
  for (int64_t i = 0; i < count;) {
    const int32_t k = raw.key[i];
    int64_t j = i + 1;
    while (j < count && raw.key[j] == k) ++j;
    const int64_t slot = fill[k];
    fill[k] += static_cast<int32_t>(j - i);
    std::copy(raw.off.begin() + i, raw.off.begin() + j, e.offs.begin() + slot);
    std::copy(raw.nz.begin() + i, raw.nz.begin() + j, e.nz.begin() + slot);
    if (values != nullptr)
      for (int64_t t = i; t < j; ++t) e.vals[slot + (t - i)] = values[raw.nz[t]];
    i = j;
  }
  return e;
}

// Work items [bb, bb + 1, c0, c1) for the threads, in batch-block order: one per batch block, or
// with the destination channels split into ranges of about equal entry counts where there are too
// few batch blocks for kPartsPerThread items a thread (small batches).
constexpr int64_t kPartsPerThread = 4;

std::vector<int64_t> make_parts(int64_t nb, int64_t n_dst, const std::vector<int32_t>& seg, int64_t n_cb,
                                int64_t threads) {
  if (threads <= 1 || nb == 0 || n_dst == 0) return {0, nb, 0, n_dst};
  const int64_t chunks = std::min(n_dst, (kPartsPerThread * threads + nb - 1) / nb);
  std::vector<int64_t> bounds{0};
  if (chunks > 1) {
    std::vector<int64_t> cost(n_dst + 1, 0);
    for (int64_t c = 0; c < n_dst; ++c) {
      int64_t entries = 0;
      for (int64_t cb = 0; cb < n_cb; ++cb) entries += seg[cb * n_dst + c + 1] - seg[cb * n_dst + c];
      cost[c + 1] = cost[c] + entries + 2;  // + the tile's loads and stores of its partial sums
    }
    int64_t c1 = 0;
    for (int64_t i = 1; i < chunks; ++i) {
      const int64_t goal = cost[n_dst] * i / chunks;
      while (c1 < n_dst && cost[c1] < goal) ++c1;
      if (c1 > bounds.back() && c1 < n_dst) bounds.push_back(c1);
    }
  }
  bounds.push_back(n_dst);
  std::vector<int64_t> parts;
  for (int64_t bb = 0; bb < nb; ++bb)
    for (size_t i = 0; i + 1 < bounds.size(); ++i) parts.insert(parts.end(), {bb, bb + 1, bounds[i], bounds[i + 1]});
  return parts;
}

// Entry offsets, tile positions and plane maps are int32.
void check_offsets_fit(const char* op, int64_t elems) {
  TORCH_CHECK_VALUE(elems < std::numeric_limits<int32_t>::max(), op,
                    ": the operands are too large for the CPU kernel's 32-bit offsets (", elems,
                    " elements per batch block or plane)");
}

// Outputs and workspaces come from the block cache of output_pool.h: no page faults per call.
using cpu::empty_output;

// Scratch buffers of the passes (packed operands, partial sums), kept per thread and slot and reused
// across calls: a fresh multi-megabyte allocation costs its page faults on every call. A buffer is
// only replaced when a larger one (or another dtype) is needed.
enum WorkspaceSlot { kSlotSource = 0, kSlotX = 1, kSlotPartial = 2, kSlotTileOut = 3, kSlots = 4 };

template <typename T>
T* workspace(int slot, int64_t elems, const at::TensorOptions& options) {
  thread_local at::Tensor buffers[2][kSlots];
  at::Tensor& buf = buffers[sizeof(T) == 8 ? 1 : 0][slot];
  if (!buf.defined() || buf.numel() < elems) {
    buf = at::Tensor();  // free first: old and new need not coexist
    buf = empty_output({std::max<int64_t>(elems, 1)}, options.dtype(c10::CppTypeToScalarType<T>::value));
  }
  return buf.data_ptr<T>();
}

template <typename T>
T* pack(int slot, const at::Tensor& x, int64_t lanes, const std::vector<int32_t>& map, int64_t ch_stride) {
  const int64_t n = x.size(0), c = x.size(1), in_px = x.size(2) * x.size(3);
  const int64_t nb = (n + lanes - 1) / lanes;
  T* dst = workspace<T>(slot, nb * c * ch_stride * lanes, x.options());
  const at::Tensor src = x.contiguous();
  GRANET_ISA_CALL(conv_pack<T>, src.data_ptr<T>(), dst, n, c, in_px, map.data(), static_cast<int64_t>(map.size()),
                  ch_stride);
  return dst;
}

template <typename T>
cpu::ConvTask<T> make_task(const T* src, int64_t src_bb, int64_t nb, int64_t n_dst, const TileSpace& ts,
                           const Entries<T>& e, std::vector<int64_t>& parts) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  parts = make_parts(nb, n_dst, e.seg, e.n_cb, threads);
  cpu::ConvTask<T> t{};
  t.src = src;
  t.src_bb = src_bb;
  t.n_dst = n_dst;
  t.tiles = ts.tiles.data();
  t.n_tiles = static_cast<int64_t>(ts.tiles.size() / 4);
  t.max_w = ts.max_width;
  t.seg = e.seg.data();
  t.n_cb = e.n_cb;
  t.offs = e.offs.data();
  t.vals = e.vals.empty() ? nullptr : e.vals.data();
  t.parts = parts.data();
  t.n_parts = static_cast<int64_t>(parts.size() / 4);
  t.n_threads = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(1, t.n_parts)));
  return t;
}

// Accumulation into out [n][n_dst][out_px] through the tile-space map (partial sums per thread).
template <typename T>
void set_output(cpu::ConvTask<T>& t, T* out, int64_t n, int64_t out_px, const std::vector<int32_t>& map,
                const T* bias, int64_t lanes, const at::TensorOptions& options) {
  t.out = out;
  t.out_ch = out_px;
  t.out_img = t.n_dst * out_px;
  t.map = map.empty() ? nullptr : map.data();
  t.bias = bias;
  t.n_img = n;
  t.partial_thread = t.n_cb > 1 ? t.n_dst * t.max_w * lanes : 0;
  t.partial = t.n_cb > 1 ? workspace<T>(kSlotPartial, t.n_threads * t.partial_thread, options) : nullptr;
}

// Tile-space pixel f -> index into an [rows_out][cols_out] plane, or -1 past a row's end.
std::vector<int32_t> tile_space_map(const TileSpace& ts, int64_t row0, int64_t row_step, int64_t col0,
                                    int64_t col_step, int64_t out_cols) {
  std::vector<int32_t> map(ts.size);
  for (int64_t f = 0; f < ts.size; ++f) {
    const int64_t k = f / ts.q, j = f % ts.q;
    map[f] = j < ts.cols ? static_cast<int32_t>((row0 + k * row_step) * out_cols + col0 + j * col_step) : -1;
  }
  return map;
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

// Pixel lanes over zero-padded planes (stride 1, small batches). The source of a pass is packed as
// [n][channels][ch_stride]: the plane with its padding, then zeros. The tile space is the
// destination rows at the padded plane's row pitch, rounded up to whole vectors, so that every tap
// is one shift of the whole tile space and each tile reads contiguous runs. The columns past a row's
// end are computed (from the padding and the next row's first pixels, all inside the buffer) and
// dropped when the result, laid out in tile space, is copied into the NCHW tensor.
struct PaddedPixels {
  TileSpace ts;
  int64_t pitch = 0, ch_stride = 0, fp = 0;
  std::vector<int64_t> tap_shift;  // per tap (ky * kw + kx): element shift of its source run
};

// flip: the taps of the input gradient (ky, kx) -> (kh - 1 - ky, kw - 1 - kx).
template <typename T>
PaddedPixels padded_pixels_plan(const char* op, const Geometry& g, int64_t rows, int64_t pitch, int64_t plane_rows,
                                int64_t channels, int64_t lanes, bool flip) {
  PaddedPixels pp;
  pp.pitch = pitch;
  const int64_t vectors = (rows * pitch + lanes - 1) / lanes, ts_px = vectors * lanes;
  pp.ts.rows = 1;
  pp.ts.cols = pp.ts.q = pp.ts.size = ts_px;
  int64_t v = 0;
  for (int64_t width : split_widths(vectors, cpu::kConvMaxTile)) {
    add_tile(pp.ts, v * lanes, v * lanes, width);
    v += width;
  }
  const int64_t taps = g.kh * g.kw;
  pp.tap_shift.resize(taps);
  for (int64_t rs = 0; rs < taps; ++rs) {
    const int64_t ky = flip ? g.kh - 1 - rs / g.kw : rs / g.kw, kx = flip ? g.kw - 1 - rs % g.kw : rs % g.kw;
    pp.tap_shift[rs] = ky * g.dh * pitch + kx * g.dw;
  }
  const int64_t max_shift = (g.kh - 1) * g.dh * pitch + (g.kw - 1) * g.dw;
  pp.fp = footprint(pp.tap_shift, pp.ts.max_width * lanes);
  // A channel's region holds its padded plane and every read of its tiles (ts_px + max_shift).
  pp.ch_stride = padded_channel_stride(std::max(plane_rows * pitch, ts_px + max_shift), pp.fp,
                                       static_cast<int64_t>(sizeof(T)));
  check_offsets_fit(op, channels * pp.ch_stride);
  return pp;
}

// [n*c][rows][cols] -> [n*c][ch_stride] with (y, x) at (y + top) * pitch + x + left, zeros elsewhere.
template <typename T>
void pack_padded(const T* s, T* d, int64_t planes, int64_t rows, int64_t cols, int64_t top, int64_t left, int64_t pitch,
                 int64_t ch_stride) {
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T* di = d + i * ch_stride;
      const T* si = s + i * rows * cols;
      std::fill(di, di + ch_stride, T(0));
      for (int64_t y = 0; y < rows; ++y) std::copy(si + y * cols, si + (y + 1) * cols, di + (y + top) * pitch + left);
    }
  });
}

// [n*c][ts_px] in tile space (row pitch `pitch`) -> the [n*c][rows][cols] tensor `out`.
template <typename T>
void unpack_tile_space(const T* tile_out, int64_t ts_px, int64_t pitch, T* out, int64_t planes, int64_t rows,
                       int64_t cols) {
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t y = 0; y < rows; ++y)
        std::copy(tile_out + i * ts_px + y * pitch, tile_out + i * ts_px + y * pitch + cols, out + (i * rows + y) * cols);
  });
}

template <typename T>
void forward_padded_pixels(const at::Tensor& input, const int32_t* cr, const int32_t* cl, const T* values, int64_t nnz,
                           const Geometry& g, const T* bias, at::Tensor& out, int64_t lanes) {
  const int64_t n = input.size(0), c_in = input.size(1), h = input.size(2), w = input.size(3);
  const int64_t c_out = out.size(1), ho = out.size(2), wo = out.size(3);
  const int64_t wp = w + 2 * g.pw;
  const PaddedPixels pp = padded_pixels_plan<T>(kOpForward, g, ho, wp, h + 2 * g.ph, c_in, lanes, false);
  const int64_t ts_px = pp.ts.size, taps = g.kh * g.kw;
  const int64_t n_cb = channel_blocks(c_in, pp.fp, static_cast<int64_t>(sizeof(T)), nnz, c_out);
  const int64_t cb_size = std::max<int64_t>(1, (c_in + n_cb - 1) / n_cb);
  const FilterColumns fc(c_in, taps);
  const std::vector<int32_t> block = block_of_channel(c_in, cb_size);
  RawEntries raw(cr[c_out]);
  for (int64_t o = 0; o < c_out; ++o)
    for (int64_t q = cr[o]; q < cr[o + 1]; ++q) {
      const int32_t ci = fc.channel[cl[q]];
      raw.set(q, block[ci] * c_out + o, ci * pp.ch_stride + pp.tap_shift[fc.tap[cl[q]]], q);
    }
  const Entries<T> e = make_entries<T>(raw, n_cb, c_out, values);
  const at::Tensor x = input.contiguous();
  T* src = workspace<T>(kSlotSource, n * c_in * pp.ch_stride, input.options());
  pack_padded<T>(x.data_ptr<T>(), src, n * c_in, h, w, g.ph, g.pw, wp, pp.ch_stride);
  T* tile_out = workspace<T>(kSlotTileOut, n * c_out * ts_px, input.options());
  std::vector<int64_t> parts;
  cpu::ConvTask<T> task = make_task<T>(src, c_in * pp.ch_stride, n, c_out, pp.ts, e, parts);
  task.pixel_lanes = true;
  set_output<T>(task, tile_out, n, ts_px, {}, bias, lanes, input.options());
  GRANET_ISA_CALL(conv_engine<T>, task, true, false);
  unpack_tile_space<T>(tile_out, ts_px, wp, out.data_ptr<T>(), n * c_out, ho, wo);
}

template <typename T>
at::Tensor forward_impl(const at::Tensor& input, const at::Tensor& crow_in, const at::Tensor& col_in,
                        const at::Tensor& values_in, const Geometry& g, const c10::optional<at::Tensor>& bias_in,
                        int64_t ho, int64_t wo) {
  const int64_t n = input.size(0), c_in = input.size(1), h = input.size(2), w = input.size(3);
  const int64_t c_out = crow_in.numel() - 1;
  at::Tensor out = empty_output({n, c_out, ho, wo}, input.options());
  if (out.numel() == 0) return out;
  const int64_t lanes = GRANET_ISA_CALL(conv_lanes<T>);
  const int64_t pixel_bytes = lanes * static_cast<int64_t>(sizeof(T));
  const int64_t nb = (n + lanes - 1) / lanes;
  at::Tensor bias;
  if (bias_in.has_value()) bias = bias_in->contiguous();
  const T* bias_ptr = bias.defined() ? bias.data_ptr<T>() : nullptr;
  const at::Tensor crow = crow_in.contiguous(), col = col_in.contiguous(), values = values_in.contiguous();
  const int32_t* cr = crow.data_ptr<int32_t>();
  const int32_t* cl = col.data_ptr<int32_t>();

  if (use_pixel_lanes(g, h * w, lanes)) {
    const int64_t hw = h * w;
    check_offsets_fit(kOpForward, c_in * hw);
    const TileSpace ts = make_pixel_tiles(hw, cpu::kConvMaxTile, lanes);
    const int64_t n_cb = channel_blocks(c_in, ts.max_width, pixel_bytes, col.numel(), c_out);
    const int64_t cb_size = std::max<int64_t>(1, (c_in + n_cb - 1) / n_cb);
    RawEntries raw(col.numel());
    const std::vector<int32_t> block = block_of_channel(c_in, cb_size);
    for (int64_t o = 0; o < c_out; ++o)
      for (int64_t q = cr[o]; q < cr[o + 1]; ++q) raw.set(q, block[cl[q]] * c_out + o, cl[q] * hw, q);
    const Entries<T> e = make_entries<T>(raw, n_cb, c_out, values.data_ptr<T>());
    const at::Tensor x = input.contiguous();
    std::vector<int64_t> parts;
    cpu::ConvTask<T> task = make_task<T>(x.data_ptr<T>(), c_in * hw, n, c_out, ts, e, parts);
    task.pixel_lanes = true;
    set_output<T>(task, out.data_ptr<T>(), n, hw, {}, bias_ptr, lanes, input.options());
    GRANET_ISA_CALL(conv_engine<T>, task, true, false);
    return out;
  }

  // Source: the zero-padded input, each plane split into the stride phases the taps use.
  const int64_t hp = h + 2 * g.ph, wp = w + 2 * g.pw;
  if (use_padded_pixel_lanes(g, n, ho, wp, lanes)) {
    forward_padded_pixels<T>(input, cr, cl, values.data_ptr<T>(), col.numel(), g, bias_ptr, out, lanes);
    return out;
  }
  std::vector<int64_t> phase_h(g.sh, -1), phase_w(g.sw, -1), used_h, used_w;
  for (int64_t r = 0; r < g.kh; ++r)
    if (phase_h[(r * g.dh) % g.sh] < 0) {
      phase_h[(r * g.dh) % g.sh] = static_cast<int64_t>(used_h.size());
      used_h.push_back((r * g.dh) % g.sh);
    }
  for (int64_t s = 0; s < g.kw; ++s)
    if (phase_w[(s * g.dw) % g.sw] < 0) {
      phase_w[(s * g.dw) % g.sw] = static_cast<int64_t>(used_w.size());
      used_w.push_back((s * g.dw) % g.sw);
    }
  int64_t hs = 0, ws = 0;
  for (int64_t p : used_h) hs = std::max(hs, (hp - p + g.sh - 1) / g.sh);
  for (int64_t p : used_w) ws = std::max(ws, (wp - p + g.sw - 1) / g.sw);
  const int64_t nph = static_cast<int64_t>(used_h.size()), npw = static_cast<int64_t>(used_w.size());
  const int64_t plane_px = nph * npw * hs * ws;
  auto shift = [&](int64_t r, int64_t s) {
    const int64_t a = phase_h[(r * g.dh) % g.sh], b = phase_w[(s * g.dw) % g.sw];
    return ((a * npw + b) * hs + (r * g.dh) / g.sh) * ws + (s * g.dw) / g.sw;
  };

  const TileSpace ts = make_tiles(ho, wo, ws, cpu::kConvMaxTile, lanes);
  std::vector<int64_t> shifts;
  for (int64_t r = 0; r < g.kh; ++r)
    for (int64_t s = 0; s < g.kw; ++s) shifts.push_back(shift(r, s));
  const int64_t fp = footprint(shifts, ts.max_width);
  const int64_t n_cb = channel_blocks(c_in, fp, pixel_bytes, col_in.numel(), c_out);
  const int64_t cb_size = std::max<int64_t>(1, (c_in + n_cb - 1) / n_cb);
  const int64_t ch_stride = padded_channel_stride(plane_px, fp, pixel_bytes);
  check_offsets_fit(kOpForward, c_in * ch_stride * lanes);
  check_offsets_fit(kOpForward, std::max(h * w, ho * wo));

  std::vector<int32_t> pack_map(plane_px);
  for (int64_t a = 0; a < nph; ++a)
    for (int64_t b = 0; b < npw; ++b)
      for (int64_t i = 0; i < hs; ++i)
        for (int64_t j = 0; j < ws; ++j) {
          const int64_t y = used_h[a] + i * g.sh - g.ph, x = used_w[b] + j * g.sw - g.pw;
          pack_map[((a * npw + b) * hs + i) * ws + j] =
              (y >= 0 && y < h && x >= 0 && x < w) ? static_cast<int32_t>(y * w + x) : -1;
        }

  RawEntries raw(col.numel());
  const int64_t taps = g.kh * g.kw;
  std::vector<int64_t> tap_shift(taps);
  for (int64_t rs = 0; rs < taps; ++rs) tap_shift[rs] = shift(rs / g.kw, rs % g.kw);
  const FilterColumns fc(c_in, taps);
  const std::vector<int32_t> block = block_of_channel(c_in, cb_size);
  for (int64_t o = 0; o < c_out; ++o)
    for (int64_t q = cr[o]; q < cr[o + 1]; ++q) {
      const int32_t ci = fc.channel[cl[q]];
      raw.set(q, block[ci] * c_out + o, (ci * ch_stride + tap_shift[fc.tap[cl[q]]]) * lanes, q);
    }
  const Entries<T> e = make_entries<T>(raw, n_cb, c_out, values.data_ptr<T>());
  const std::vector<int32_t> out_map = tile_space_map(ts, 0, 1, 0, 1, wo);

  const T* src = pack<T>(kSlotSource, input, lanes, pack_map, ch_stride);
  std::vector<int64_t> parts;
  cpu::ConvTask<T> task = make_task<T>(src, c_in * ch_stride * lanes, nb, c_out, ts, e, parts);
  set_output<T>(task, out.data_ptr<T>(), n, ho * wo, out_map, bias_ptr, lanes, input.options());
  GRANET_ISA_CALL(conv_engine<T>, task, true, false);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Backward: dX (and dW) phase by phase over the input pixels
// ---------------------------------------------------------------------------------------------

template <typename T>
struct BackwardPhase {
  TileSpace ts;
  Entries<T> e;
  std::vector<int32_t> map;  // tile space -> input plane index
};

template <typename T>
struct BackwardPlan {
  int64_t lanes = 0, nb = 0, hq = 0, wq = 0, ch_stride = 0;
  std::vector<int32_t> dy_map;
  std::vector<BackwardPhase<T>> phases;
};

// Input pixel ih = phi + k*stride gets tap r from dY row k + A(r), where phi = (r*d - p) mod stride.
struct TapPhase {
  int64_t phase, a;
};

TapPhase tap_phase(int64_t r, int64_t d, int64_t p, int64_t stride) {
  const int64_t phi = (((r * d - p) % stride) + stride) % stride;
  return {phi, (phi + p - r * d) / stride};
}

template <typename T>
BackwardPlan<T> backward_plan(const char* op, int64_t n, int64_t c_in, int64_t h, int64_t w, int64_t c_out, int64_t ho,
                              int64_t wo, const Geometry& g, const int32_t* cr, const int32_t* cl, const T* values,
                              bool fused_tiles) {
  BackwardPlan<T> plan;
  plan.lanes = GRANET_ISA_CALL(conv_lanes<T>);
  const int64_t lanes = plan.lanes, pixel_bytes = lanes * static_cast<int64_t>(sizeof(T));
  plan.nb = (n + lanes - 1) / lanes;
  auto rows_of = [](int64_t phi, int64_t size, int64_t stride) { return phi < size ? (size - phi + stride - 1) / stride : 0; };

  // Halo of the padded dY: every tap of every phase with pixels reads inside it.
  int64_t top = 0, left = 0, need_h = ho, need_w = wo;
  for (int64_t r = 0; r < g.kh; ++r) {
    const TapPhase t = tap_phase(r, g.dh, g.ph, g.sh);
    const int64_t rows = rows_of(t.phase, h, g.sh);
    if (rows == 0) continue;
    top = std::max(top, -t.a);
  }
  for (int64_t s = 0; s < g.kw; ++s) {
    const TapPhase t = tap_phase(s, g.dw, g.pw, g.sw);
    const int64_t cols = rows_of(t.phase, w, g.sw);
    if (cols == 0) continue;
    left = std::max(left, -t.a);
  }
  for (int64_t r = 0; r < g.kh; ++r) {
    const TapPhase t = tap_phase(r, g.dh, g.ph, g.sh);
    const int64_t rows = rows_of(t.phase, h, g.sh);
    if (rows > 0) need_h = std::max(need_h, rows + t.a);
  }
  for (int64_t s = 0; s < g.kw; ++s) {
    const TapPhase t = tap_phase(s, g.dw, g.pw, g.sw);
    const int64_t cols = rows_of(t.phase, w, g.sw);
    if (cols > 0) need_w = std::max(need_w, cols + t.a);
  }
  plan.hq = top + need_h;
  plan.wq = left + need_w;
  const int64_t wmax = fused_tiles ? cpu::kConvMaxFusedTile : cpu::kConvMaxTile;

  // Tile spaces and footprints first (the channel stride depends on the largest footprint).
  struct PhaseGeom {
    int64_t ph, pw, rows, cols, fp, n_cb;
  };
  std::vector<PhaseGeom> geoms;
  int64_t max_fp = 0;
  for (int64_t a = 0; a < g.sh; ++a)
    for (int64_t b = 0; b < g.sw; ++b) {
      const int64_t rows = rows_of(a, h, g.sh), cols = rows_of(b, w, g.sw);
      if (rows == 0 || cols == 0) continue;
      BackwardPhase<T> ph;
      ph.ts = make_tiles(rows, cols, plan.wq, wmax, lanes);
      std::vector<int64_t> shifts;
      for (int64_t r = 0; r < g.kh; ++r)
        for (int64_t s = 0; s < g.kw; ++s) {
          const TapPhase tr = tap_phase(r, g.dh, g.ph, g.sh), tc = tap_phase(s, g.dw, g.pw, g.sw);
          if (tr.phase == a && tc.phase == b) shifts.push_back((tr.a + top) * plan.wq + tc.a + left);
        }
      const int64_t fp = footprint(shifts, ph.ts.max_width);
      max_fp = std::max(max_fp, fp);
      geoms.push_back({a, b, rows, cols, fp, channel_blocks(c_out, fp, pixel_bytes, cr[c_out], c_in)});
      ph.map = tile_space_map(ph.ts, a, g.sh, b, g.sw, w);
      plan.phases.push_back(std::move(ph));
    }
  plan.ch_stride = padded_channel_stride(plan.hq * plan.wq, max_fp, pixel_bytes);
  check_offsets_fit(op, c_out * plan.ch_stride * lanes);
  check_offsets_fit(op, std::max(h * w, ho * wo));

  plan.dy_map.resize(plan.hq * plan.wq);
  for (int64_t i = 0; i < plan.hq; ++i)
    for (int64_t j = 0; j < plan.wq; ++j) {
      const int64_t y = i - top, x = j - left;
      plan.dy_map[i * plan.wq + j] = (y >= 0 && y < ho && x >= 0 && x < wo) ? static_cast<int32_t>(y * wo + x) : -1;
    }

  // Entries: nonzero (o, ci, r, s) goes to the phase its tap lands on; destination ci, source o.
  const int64_t taps = g.kh * g.kw;
  std::vector<int64_t> phase_index(g.sh * g.sw, -1);
  for (size_t i = 0; i < geoms.size(); ++i) phase_index[geoms[i].ph * g.sw + geoms[i].pw] = static_cast<int64_t>(i);
  std::vector<RawEntries> raw(geoms.size());
  std::vector<int64_t> cb_size(geoms.size());
  for (size_t i = 0; i < geoms.size(); ++i) cb_size[i] = std::max<int64_t>(1, (c_out + geoms[i].n_cb - 1) / geoms[i].n_cb);
  // Per tap: its phase and its shift in the padded dY plane.
  std::vector<int64_t> tap_pass(taps), tap_shift(taps);
  for (int64_t rs = 0; rs < taps; ++rs) {
    const TapPhase tr = tap_phase(rs / g.kw, g.dh, g.ph, g.sh), tc = tap_phase(rs % g.kw, g.dw, g.pw, g.sw);
    tap_pass[rs] = phase_index[tr.phase * g.sw + tc.phase];
    tap_shift[rs] = (tr.a + top) * plan.wq + tc.a + left;
  }
  for (RawEntries& r : raw) r.reserve(geoms.size() == 1 ? static_cast<int64_t>(cr[c_out]) : 0);
  const FilterColumns fc(c_in, taps);
  for (int64_t o = 0; o < c_out; ++o)
    for (int64_t q = cr[o]; q < cr[o + 1]; ++q) {
      const int32_t ci = fc.channel[cl[q]], rs = fc.tap[cl[q]];
      const int64_t p = tap_pass[rs];
      if (p < 0) continue;  // the tap only meets padding: its dW is 0, it adds nothing to dX
      raw[p].add((o / cb_size[p]) * c_in + ci, (o * plan.ch_stride + tap_shift[rs]) * lanes, q);
    }
  for (size_t i = 0; i < geoms.size(); ++i) {
    plan.phases[i].e = make_entries<T>(raw[i], geoms[i].n_cb, c_in, values);
    check_offsets_fit(op, c_in * plan.phases[i].ts.size * lanes);  // x at the tile-space pixels (dW)
  }
  return plan;
}

// Sums the slots' dW accumulators into dvalues (CSR order), always in slot order.
template <typename T>
void gather_dw(const at::Tensor& dw_e, int64_t count, int threads, const std::vector<int32_t>& nz, at::Tensor* dvalues) {
  T* out = dvalues->data_ptr<T>();
  const T* acc = dw_e.data_ptr<T>();
  for (int64_t i = 0; i < count; ++i) {
    T sum = acc[i];
    for (int th = 1; th < threads; ++th) sum += acc[th * count + i];
    out[nz[i]] = sum;
  }
}

// The backward of a 1x1 / stride 1 / unpadded conv with pixel lanes, on the NCHW tensors directly:
// dX [N][C_in][HW] = W^T dY, dW = (dY x^T) at the nonzeros.
template <typename T>
void backward_pixel_lanes(const char* op, const at::Tensor& grad_in, const at::Tensor* input, const at::Tensor& crow,
                          const at::Tensor& col, const at::Tensor* values, int64_t n, int64_t c_in, int64_t hw,
                          at::Tensor* dx, at::Tensor* dvalues) {
  const bool need_dx = dx != nullptr, need_dw = dvalues != nullptr;
  const int64_t lanes = GRANET_ISA_CALL(conv_lanes<T>), pixel_bytes = lanes * static_cast<int64_t>(sizeof(T));
  const int64_t c_out = crow.numel() - 1;
  check_offsets_fit(op, std::max(c_in, c_out) * hw);
  const int32_t* cr = crow.data_ptr<int32_t>();
  const int32_t* cl = col.data_ptr<int32_t>();
  // dX and dW go in two passes of full-width tiles: with pixel lanes the fused pass's narrower tiles
  // cost more than reading dY twice (measured 1x1 1024->256 at 14x14, batch 64: 65 vs 56 ms at
  // d = 0.1, 37 vs 24 ms at d = 0.02).
  const TileSpace ts = make_pixel_tiles(hw, cpu::kConvMaxTile, lanes);
  const int64_t n_cb = channel_blocks(c_out, ts.max_width, pixel_bytes, col.numel(), c_in);
  const int64_t cb_size = std::max<int64_t>(1, (c_out + n_cb - 1) / n_cb);
  RawEntries raw(col.numel());
  for (int64_t o = 0; o < c_out; ++o)
    for (int64_t q = cr[o]; q < cr[o + 1]; ++q) raw.set(q, (o / cb_size) * c_in + cl[q], o * hw, q);
  const Entries<T> e = make_entries<T>(raw, n_cb, c_in, values ? values->data_ptr<T>() : nullptr);
  const at::Tensor grad = grad_in.contiguous();
  std::vector<int64_t> parts;
  cpu::ConvTask<T> task = make_task<T>(grad.data_ptr<T>(), c_out * hw, n, c_in, ts, e, parts);
  task.pixel_lanes = true;
  if (need_dx) set_output<T>(task, dx->data_ptr<T>(), n, hw, {}, nullptr, lanes, grad.options());
  at::Tensor x, xtail, dw_e;
  if (need_dw) {
    x = input->contiguous();
    task.xt = x.data_ptr<T>();
    task.xt_ch = hw;
    task.xt_bb = c_in * hw;
    if (hw % lanes) {  // the tail vector's lanes that the previous vector already covers count once
      xtail = x.reshape({n, c_in, hw}).narrow(2, hw - lanes, lanes).clone();
      xtail.narrow(2, 0, lanes - hw % lanes).zero_();
      task.xtail = xtail.data_ptr<T>();
    }
    task.dw_thread = static_cast<int64_t>(e.offs.size());
    dw_e = at::zeros({task.n_threads * task.dw_thread}, grad.options());
    task.dw = dw_e.data_ptr<T>();
  }
  if (need_dx) GRANET_ISA_CALL(conv_engine<T>, task, true, false);
  if (need_dw) {
    GRANET_ISA_CALL(conv_engine<T>, task, false, true);
    gather_dw<T>(dw_e, task.dw_thread, task.n_threads, e.nz, dvalues);
  }
}

// The input gradient of a stride-1 conv is a correlation of dY, zero-padded by the taps' reach minus
// the forward padding, with the flipped filters: with pixel lanes over that padded dY (small batches;
// the forward padding must not exceed the taps' reach). dX and dW in two passes, as backward_pixel_lanes.
bool use_padded_pixel_lanes_backward(const Geometry& g, int64_t n, int64_t h, int64_t w, int64_t lanes) {
  return g.ph <= (g.kh - 1) * g.dh && g.pw <= (g.kw - 1) * g.dw &&
         use_padded_pixel_lanes(g, n, h, w + (g.kw - 1) * g.dw, lanes);
}

template <typename T>
void backward_padded_pixels(const char* op, const at::Tensor& grad_in, const at::Tensor* input, const int32_t* cr,
                            const int32_t* cl, const T* values, int64_t nnz, int64_t n, int64_t c_in, int64_t h,
                            int64_t w, const Geometry& g, at::Tensor* dx, at::Tensor* dvalues) {
  const bool need_dx = dx != nullptr, need_dw = dvalues != nullptr;
  const int64_t lanes = GRANET_ISA_CALL(conv_lanes<T>);
  const int64_t c_out = grad_in.size(1), ho = grad_in.size(2), wo = grad_in.size(3);
  const int64_t top = (g.kh - 1) * g.dh - g.ph, left = (g.kw - 1) * g.dw - g.pw;
  const int64_t wq = w + (g.kw - 1) * g.dw;
  const PaddedPixels pp = padded_pixels_plan<T>(op, g, h, wq, h + (g.kh - 1) * g.dh, std::max(c_in, c_out), lanes, true);
  const int64_t ts_px = pp.ts.size, taps = g.kh * g.kw;
  const int64_t n_cb = channel_blocks(c_out, pp.fp, static_cast<int64_t>(sizeof(T)), nnz, c_in);
  const int64_t cb_size = std::max<int64_t>(1, (c_out + n_cb - 1) / n_cb);
  const FilterColumns fc(c_in, taps);
  RawEntries raw(cr[c_out]);
  for (int64_t o = 0; o < c_out; ++o)
    for (int64_t q = cr[o]; q < cr[o + 1]; ++q)
      raw.set(q, (o / cb_size) * c_in + fc.channel[cl[q]], o * pp.ch_stride + pp.tap_shift[fc.tap[cl[q]]], q);
  const Entries<T> e = make_entries<T>(raw, n_cb, c_in, values);
  const at::Tensor grad = grad_in.contiguous();
  T* src = workspace<T>(kSlotSource, n * c_out * pp.ch_stride, grad.options());
  pack_padded<T>(grad.data_ptr<T>(), src, n * c_out, ho, wo, top, left, wq, pp.ch_stride);
  std::vector<int64_t> parts;
  cpu::ConvTask<T> task = make_task<T>(src, c_out * pp.ch_stride, n, c_in, pp.ts, e, parts);
  task.pixel_lanes = true;
  if (need_dx) {
    T* tile_out = workspace<T>(kSlotTileOut, n * c_in * ts_px, grad.options());
    set_output<T>(task, tile_out, n, ts_px, {}, nullptr, lanes, grad.options());
    GRANET_ISA_CALL(conv_engine<T>, task, true, false);
    unpack_tile_space<T>(tile_out, ts_px, wq, dx->data_ptr<T>(), n * c_in, h, w);
  }
  if (need_dw) {
    // x in tile space, zero in the dropped columns: what the dropped pixels read adds nothing to dW.
    const at::Tensor x = input->contiguous();
    T* xt = workspace<T>(kSlotX, n * c_in * ts_px, grad.options());
    pack_padded<T>(x.data_ptr<T>(), xt, n * c_in, h, w, 0, 0, wq, ts_px);
    task.xt = xt;
    task.xt_ch = ts_px;
    task.xt_bb = c_in * ts_px;
    task.dw_thread = static_cast<int64_t>(e.offs.size());
    at::Tensor dw_e = at::zeros({task.n_threads * task.dw_thread}, grad.options());
    task.dw = dw_e.data_ptr<T>();
    GRANET_ISA_CALL(conv_engine<T>, task, false, true);
    gather_dw<T>(dw_e, task.dw_thread, task.n_threads, e.nz, dvalues);
  }
}

// dX and/or dW of the conv; dx / dvalues are written when need_dx / need_dw.
template <typename T>
void backward_impl(const char* op, const at::Tensor& grad, const at::Tensor* input, const at::Tensor& crow_in,
                   const at::Tensor& col_in, const at::Tensor* values_in, int64_t n, int64_t c_in, int64_t h, int64_t w,
                   const Geometry& g, at::Tensor* dx, at::Tensor* dvalues) {
  const bool need_dx = dx != nullptr, need_dw = dvalues != nullptr;
  const int64_t c_out = crow_in.numel() - 1, ho = grad.size(2), wo = grad.size(3);
  if (n == 0 || c_in == 0 || h == 0 || w == 0) {
    if (need_dx) dx->zero_();
    return;
  }
  const at::Tensor crow = crow_in.contiguous(), col = col_in.contiguous();
  at::Tensor values;
  if (need_dx) values = values_in->contiguous();
  const int64_t lanes0 = GRANET_ISA_CALL(conv_lanes<T>);
  if (use_pixel_lanes(g, h * w, lanes0)) {
    backward_pixel_lanes<T>(op, grad, input, crow, col, need_dx ? &values : nullptr, n, c_in, h * w, dx, dvalues);
    return;
  }
  if (use_padded_pixel_lanes_backward(g, n, h, w, lanes0)) {
    backward_padded_pixels<T>(op, grad, input, crow.data_ptr<int32_t>(), col.data_ptr<int32_t>(),
                              need_dx ? values.data_ptr<T>() : nullptr, col.numel(), n, c_in, h, w, g, dx, dvalues);
    return;
  }
  const BackwardPlan<T> plan = backward_plan<T>(op, n, c_in, h, w, c_out, ho, wo, g, crow.data_ptr<int32_t>(),
                                                col.data_ptr<int32_t>(), need_dx ? values.data_ptr<T>() : nullptr,
                                                need_dx && need_dw);
  const int64_t lanes = plan.lanes, nb = plan.nb;
  const T* src = pack<T>(kSlotSource, grad, lanes, plan.dy_map, plan.ch_stride);
  const int64_t src_bb = c_out * plan.ch_stride * lanes;
  for (const BackwardPhase<T>& ph : plan.phases) {
    std::vector<int64_t> parts;
    cpu::ConvTask<T> task = make_task<T>(src, src_bb, nb, c_in, ph.ts, ph.e, parts);
    at::Tensor dw_e;
    if (need_dx) set_output<T>(task, dx->data_ptr<T>(), n, h * w, ph.map, nullptr, lanes, grad.options());
    if (need_dw) {
      task.xt = pack<T>(kSlotX, *input, lanes, ph.map, ph.ts.size);
      task.xt_ch = ph.ts.size * lanes;
      task.xt_bb = c_in * task.xt_ch;
      task.dw_thread = static_cast<int64_t>(ph.e.offs.size());
      dw_e = at::zeros({task.n_threads * task.dw_thread}, grad.options());
      task.dw = dw_e.data_ptr<T>();
    }
    GRANET_ISA_CALL(conv_engine<T>, task, need_dx, need_dw);
    if (need_dw) gather_dw<T>(dw_e, task.dw_thread, task.n_threads, ph.e.nz, dvalues);
  }
}

}  // namespace

at::Tensor sparse_conv2d_cpu(const at::Tensor& input, const at::Tensor& crow, const at::Tensor& col,
                             const at::Tensor& values, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, const c10::optional<at::Tensor>& bias) {
  const char* op = kOpForward;
  check_float4d(op, "input", input);
  const Geometry g = check_geometry(op, kernel_size, stride, padding, dilation);
  check_filters(op, crow, col, &values, input, input.size(1), g);
  const int64_t c_out = crow.numel() - 1;
  if (bias.has_value()) {
    check_cpu(op, "bias", *bias);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == c_out, op, ": bias must be 1-D with ", c_out,
                      " entries (the output channels, len(crow_indices) - 1), got shape ", bias->sizes());
    TORCH_CHECK_VALUE(bias->scalar_type() == input.scalar_type(), op, ": bias dtype ", bias->scalar_type(),
                      " does not match input dtype ", input.scalar_type());
  }
  const std::pair<int64_t, int64_t> out_hw = check_output_size(op, input.size(2), input.size(3), g);
  const int64_t ho = out_hw.first, wo = out_hw.second;
  return AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "granet_sparse_conv2d_cpu", [&] {
    return forward_impl<scalar_t>(input, crow, col, values, g, bias, ho, wo);
  });
}

at::Tensor sparse_conv2d_dx_cpu(const at::Tensor& grad_output, const at::Tensor& crow, const at::Tensor& col,
                                const at::Tensor& values, at::IntArrayRef input_shape, at::IntArrayRef kernel_size,
                                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = kOpDx;
  check_float4d(op, "grad_output", grad_output);
  const Geometry g = check_geometry(op, kernel_size, stride, padding, dilation);
  TORCH_CHECK_VALUE(input_shape.size() == 4 && input_shape[0] >= 0 && input_shape[1] >= 0 && input_shape[2] >= 0 &&
                        input_shape[3] >= 0,
                    op, ": input_shape must be 4 sizes [N, C, H, W] >= 0, got ", input_shape);
  const int64_t n = input_shape[0], c_in = input_shape[1], h = input_shape[2], w = input_shape[3];
  check_filters(op, crow, col, &values, grad_output, c_in, g);
  const std::pair<int64_t, int64_t> out_hw = check_output_size(op, h, w, g);
  const int64_t ho = out_hw.first, wo = out_hw.second;
  check_grad_output(op, grad_output, n, crow.numel() - 1, ho, wo);
  at::Tensor dx = empty_output({n, c_in, h, w}, grad_output.options());
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "granet_sparse_conv2d_dx_cpu", [&] {
    backward_impl<scalar_t>(op, grad_output, nullptr, crow, col, &values, n, c_in, h, w, g, &dx, nullptr);
  });
  return dx;
}

at::Tensor sparse_conv2d_dw_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& crow,
                                const at::Tensor& col, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = kOpDw;
  check_float4d(op, "input", input);
  check_float4d(op, "grad_output", grad_output);
  TORCH_CHECK_VALUE(grad_output.scalar_type() == input.scalar_type(), op, ": grad_output dtype ",
                    grad_output.scalar_type(), " does not match input dtype ", input.scalar_type());
  const Geometry g = check_geometry(op, kernel_size, stride, padding, dilation);
  const int64_t n = input.size(0), c_in = input.size(1), h = input.size(2), w = input.size(3);
  check_filters(op, crow, col, nullptr, input, c_in, g);
  const std::pair<int64_t, int64_t> out_hw = check_output_size(op, h, w, g);
  const int64_t ho = out_hw.first, wo = out_hw.second;
  check_grad_output(op, grad_output, n, crow.numel() - 1, ho, wo);
  at::Tensor dvalues = at::zeros({col.numel()}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "granet_sparse_conv2d_dw_cpu", [&] {
    backward_impl<scalar_t>(op, grad_output, &input, crow, col, nullptr, n, c_in, h, w, g, nullptr, &dvalues);
  });
  return dvalues;
}

std::tuple<at::Tensor, at::Tensor> sparse_conv2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                                              const at::Tensor& crow, const at::Tensor& col,
                                                              const at::Tensor& values, at::IntArrayRef kernel_size,
                                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                                              at::IntArrayRef dilation) {
  const char* op = kOpBackward;
  check_float4d(op, "input", input);
  check_float4d(op, "grad_output", grad_output);
  TORCH_CHECK_VALUE(grad_output.scalar_type() == input.scalar_type(), op, ": grad_output dtype ",
                    grad_output.scalar_type(), " does not match input dtype ", input.scalar_type());
  const Geometry g = check_geometry(op, kernel_size, stride, padding, dilation);
  const int64_t n = input.size(0), c_in = input.size(1), h = input.size(2), w = input.size(3);
  check_filters(op, crow, col, &values, input, c_in, g);
  const std::pair<int64_t, int64_t> out_hw = check_output_size(op, h, w, g);
  const int64_t ho = out_hw.first, wo = out_hw.second;
  check_grad_output(op, grad_output, n, crow.numel() - 1, ho, wo);
  at::Tensor dx = empty_output({n, c_in, h, w}, input.options());
  at::Tensor dvalues = at::zeros({col.numel()}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "granet_sparse_conv2d_backward_cpu", [&] {
    backward_impl<scalar_t>(op, grad_output, &input, crow, col, &values, n, c_in, h, w, g, &dx, &dvalues);
  });
  return {dx, dvalues};
}

}  // namespace granet
