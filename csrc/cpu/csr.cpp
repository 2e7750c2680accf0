// CPU entry points of the CSR products: checks, panel packing, ISA choice.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/isa.h"
#include "cpu/output_pool.h"
#include "cpu/workspace.h"
#include "granet.h"

#define GRANET_ISA_IMPL "cpu/csr_impl.h"
#include "cpu/for_each_isa.h"

namespace granet {

namespace {

using cpu::Scratch;

// Batch-panel width of the CSR kernels in bytes, a function of the batch size n and the element
// size only, so that the forward and the backward agree on the layout of the x panels they share.
// Wide panels (128 bytes: 32 fp32 lanes) read the index and values once per 32 batch rows and, with
// the panel-outer backward and software prefetch, measured fastest at every density on Zen 3 at
// batch 256. A batch narrower than a panel fills only some lanes and the kernels still pay for all
// of them, so small batches take the narrowest panel that holds them: 32, 64 or 128 bytes.
// GRANET_CSR_PANEL_BYTES=32|64|128 forces a width, for benchmarks.
int panel_bytes(int64_t n, int64_t elem_size) {
  static const int forced = [] {
    const char* env = std::getenv("GRANET_CSR_PANEL_BYTES");
    return env == nullptr ? 0 : std::atoi(env);
  }();
  if (forced == 32 || forced == 64 || forced == 128) return forced;
  for (int bytes = 32; bytes < 128; bytes *= 2)
    if (n * elem_size <= bytes) return bytes;
  return 128;
}

// Calls the copy of panel kernel `fn` for panels of `pb` bytes: the AVX2 copy for 32-byte panels on
// AVX-512 CPUs too (the AVX-512 copies need whole 64-byte vectors). A batch of 2-8 fp32 rows in 32-
// byte AVX2 panels runs the CSR training step 10-20% faster than in 64-byte AVX-512 panels (Zen 5,
// W 4096^2, 1 thread, two runs, step ms 32- / 64-byte panels: batch 2 4.26-4.57 / 4.98-4.99 at
// d = 0.1, 2.58-2.70 / 2.95-3.08 at 0.05; batch 8 4.40-4.42 / 4.98-5.54, 2.53-2.64 / 3.03-3.06), and
// the one-row inference forward too (0.65-0.66 / 0.72 ms at d = 0.1).
#define GRANET_CSR_PANEL_CALL(pb, fn, ...) \
  ((pb) == 32 ? GRANET_ISA_CALL_AT_MOST_AVX2(fn, __VA_ARGS__) : GRANET_ISA_CALL(fn, __VA_ARGS__))

template <typename T>
int panel_bytes_of(int64_t n) {
  return panel_bytes(n, static_cast<int64_t>(sizeof(T)));
}

template <typename T>
int64_t panel_elems(int64_t n, int64_t k) {
  const int64_t bt = panel_bytes_of<T>(n) / static_cast<int64_t>(sizeof(T));
  return ((n + bt - 1) / bt) * k * bt;
}

// Packs a 2-D operand into batch panels held in scratch slot `slot`.
// With `sums`, also the per-panel column sums (see pack_panels).
template <typename T>
T* pack_into(const at::Tensor& dense, T* panels, T* sums = nullptr) {
  const at::Tensor src = dense.contiguous();
  const int pb = panel_bytes_of<T>(dense.size(0));
  GRANET_CSR_PANEL_CALL(pb, pack<T>, src.data_ptr<T>(), panels, dense.size(0), dense.size(1), pb, sums);
  return panels;
}

// Whether x's first and last rows sit, bit for bit, at their lanes of panels packed with width bt.
template <typename T>
bool panels_hold_rows(const T* panels, const at::Tensor& x, int64_t bt) {
  const int64_t n = x.size(0), k = x.size(1);
  if (n == 0 || k == 0) return true;
  const auto xa = x.accessor<T, 2>();
  for (const int64_t r : {int64_t(0), n - 1}) {
    const T* panel = panels + (r / bt) * k * bt + r % bt;
    for (int64_t j = 0; j < k; ++j) {
      const T a = panel[j * bt], b = xa[r][j];
      if (std::memcmp(&a, &b, sizeof(T)) != 0) return false;
    }
  }
  return true;
}

template <typename T>
T* pack(const at::Tensor& dense, Scratch slot, T* sums = nullptr) {
  return pack_into<T>(dense, cpu::scratch_of<T>(slot, panel_elems<T>(dense.size(0), dense.size(1))), sums);
}


// The SDDMM and the CSR-order backward of small batches run their AVX2 copies on AVX-512 CPUs too
// (GRANET_ISA_CALL_AT_MOST_AVX2). Their 16-lane copies once reduced each nonzero's dot product
// through slow shuffles: on the Xeon host of an H200 device machine (2026-11-25, W 4096^2, batch
// 256, 1 thread, GRANET_CPU_ISA=avx2 / avx512) the fused backward took 39.1 / 152.1 ms at d = 0.1,
// 20.8 / 69.3 at 0.05, 9.6 / 30.8 at 0.02, the SDDMM 67.1 / 125.4 ms at d = 0.1. The CSC backward's
// 16-lane copy now folds each dot vector to 8 lanes and shares the AVX2 reduction tree (fold8 in
// csr_impl.h) and runs on AVX-512 CPUs: W 4096^2, batch 256, backward ms with its AVX2 / AVX-512
// copy on Zen 5 (2026-11-26, two alternating runs each): 32.5-32.7 / 30.2-30.5 at d = 0.1,
// 17.1 / 15.5-16.3 at 0.05, 8.5-8.7 / 8.2-8.3 at 0.02; on that Xeon equal within its noise (training
// step 67-97 / 66-83 ms at d = 0.1). The small-batch rows kernel was not faster with 16 lanes at
// batch 16 (Zen 5: step 4.2-4.5 / 4.7-5.1 ms at d = 0.1) and stays at AVX2; so does the SDDMM, which
// got the same grouped reduction (2026-11-26) but ran 20% slower with 16 lanes than with 8 (Zen 5,
// W 4096^2, batch 256: 20.6-21.9 / 17.1-17.5 ms at d = 0.1, 10.8-11.5 / 9.3-9.7 at 0.05).

// Fast paths of the O(nnz) index checks, which cost as much as a third of a kernel at low density
// when run element by element with a branch each: one branch-free (vectorised) pass decides, and the
// detailed checks of checks.cpp (with their error messages) run only when it finds a bad entry.
bool fast_in_range(const at::Tensor& idx, int64_t bound) {
  if (idx.dim() != 1 || idx.scalar_type() != at::kInt || !idx.device().is_cpu() || !idx.is_contiguous()) return false;
  // Negative entries wrap to >= 2^31 >= b.
  const uint32_t b = static_cast<uint32_t>(std::min<int64_t>(std::max<int64_t>(bound, 0), int64_t(1) << 31));
  const uint32_t* p = reinterpret_cast<const uint32_t*>(idx.data_ptr<int32_t>());
  return !GRANET_ISA_CALL(any_at_least, p, idx.numel(), b);
}

// The pointer half of the check: ptr starts at 0, never decreases and ends at nnz, and idx is a
// plain int32 CPU vector (the kernels that range-check idx themselves as they read it need no more).
bool fast_pointers_ok(const at::Tensor& ptr, const at::Tensor& idx) {
  if (ptr.dim() != 1 || ptr.numel() < 1 || ptr.scalar_type() != at::kInt || !ptr.device().is_cpu() ||
      !ptr.is_contiguous() || idx.dim() != 1 || idx.scalar_type() != at::kInt || !idx.device().is_cpu())
    return false;
  const int32_t* c = ptr.data_ptr<int32_t>();
  const int64_t rows = ptr.numel() - 1;
  if (c[0] != 0 || c[rows] != idx.numel()) return false;
  return !GRANET_ISA_CALL(any_decrease, c, rows + 1);
}

void check_compressed(const char* op, const char* ptr_name, const at::Tensor& ptr, const char* idx_name,
                      const at::Tensor& idx, int64_t bound) {
  if (!fast_pointers_ok(ptr, idx) || !fast_in_range(idx, bound))
    check_compressed_index(op, ptr_name, ptr, idx_name, idx, bound);
}

// For kernels that range-check idx as they read it: everything but that range check, which
// raise_bad_index (after the kernel reported a bad entry) does with its message.
void check_compressed_pointers(const char* op, const char* ptr_name, const at::Tensor& ptr, const char* idx_name,
                               const at::Tensor& idx, int64_t bound) {
  if (!fast_pointers_ok(ptr, idx)) check_compressed_index(op, ptr_name, ptr, idx_name, idx, bound);
}

[[noreturn]] void raise_bad_index(const char* op, const char* ptr_name, const at::Tensor& ptr, const char* idx_name,
                                  const at::Tensor& idx, int64_t bound) {
  check_compressed_index(op, ptr_name, ptr, idx_name, idx, bound);  // names the entry
  TORCH_CHECK_INDEX(false, op, ": ", idx_name, " holds an entry outside [0, ", bound, ")");
}

void check_cpu(const char* op, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": the CPU kernel needs CPU tensors, got one on ", t.device());
}

// Checks of the CSC-side arguments shared by csr_spmm_t and csr_linear_backward.
void check_csc_args(const char* op, const at::Tensor& ccol, const at::Tensor& row, const at::Tensor& perm,
                    const at::Tensor& values, const at::Tensor& dy) {
  check_dense(op, "dy", dy);
  check_cpu(op, dy);
  check_same_device(op, dy, {&ccol, &row, &perm, &values});
  TORCH_CHECK_VALUE(values.dim() == 1 && values.numel() == row.numel(), op,
                    ": values must be 1-D with as many entries as row_indices (", row.numel(), "), got shape ",
                    values.sizes());
  TORCH_CHECK_VALUE(values.scalar_type() == dy.scalar_type(), op, ": values dtype ", values.scalar_type(),
                    " does not match dy dtype ", dy.scalar_type());
  TORCH_CHECK_VALUE(perm.numel() == row.numel(), op, ": perm must have as many entries as row_indices");
  // row_indices' range is checked by the backward kernel as it reads it
  check_compressed_pointers(op, "ccol_indices", ccol, "row_indices", row, dy.size(1));
  // perm's entries are range-checked by the gather that reads them (csc_values).
  if (perm.dim() != 1 || perm.scalar_type() != at::kInt || !perm.device().is_cpu())
    check_index_range(op, "perm", perm, values.numel());
}

// Values in CSC slot order, in scratch slot d: one gather per call (reading through perm in the
// inner loop is slower). Raises if an entry of perm is outside [0, nnz).
template <typename T>
const T* csc_values(const char* op, const at::Tensor& values_in, const at::Tensor& perm_in) {
  const at::Tensor values = values_in.contiguous(), perm = perm_in.contiguous();
  T* out = cpu::scratch_of<T>(Scratch::d, values.numel());
  if (!GRANET_ISA_CALL(gather_values<T>, values.data_ptr<T>(), perm.data_ptr<int32_t>(), out, values.numel())) {
    check_index_range(op, "perm", perm, values.numel());  // names the bad entry
    TORCH_CHECK_INDEX(false, op, ": perm holds an entry outside [0, ", values.numel(), ")");
  }
  return out;
}

}  // namespace

namespace {

// y = x @ W^T (+ bias, added by the kernel as it stores y). With `keep_panels`, x is packed into a
// tensor of its own (returned second, for the backward's dW) instead of scratch.
std::tuple<at::Tensor, at::Tensor> csr_forward(const char* op, const at::Tensor& crow, const at::Tensor& col,
                                               const at::Tensor& values_in, const at::Tensor& x,
                                               const std::optional<at::Tensor>& bias_in, bool keep_panels) {
  check_csr_spmm_meta(op, crow, col, values_in, x);
  // col's range is checked by the kernel as it reads it (no separate pass over the index)
  check_compressed_pointers(op, "crow_indices", crow, "col_indices", col, x.size(1));
  check_cpu(op, x);
  const int64_t n = x.size(0), k = x.size(1), m = crow.numel() - 1;
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    bias = bias_in->contiguous();
    check_same_device(op, x, {&bias});
    TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == m, op, ": bias must be 1-D with ", m,
                      " entries (the rows of the weight), got shape ", bias.sizes());
    TORCH_CHECK_VALUE(bias.scalar_type() == x.scalar_type(), op, ": bias dtype ", bias.scalar_type(),
                      " does not match x dtype ", x.scalar_type());
  }
  const at::Tensor c = crow.contiguous(), j = col.contiguous(), values = values_in.contiguous();
  at::Tensor panels;
  at::Tensor y = AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "granet_csr_spmm_cpu", [&] {
    if (n == 1 && !keep_panels) {  // one input row (inference): read in place, no panel to pack
      const at::Tensor xc = x.contiguous();
      at::Tensor out = cpu::empty_output({n, m}, x.options());
      // its sums in the order of the panel kernel a training forward of this row runs
      const int pb = panel_bytes_of<scalar_t>(1);
      if (!GRANET_CSR_PANEL_CALL(pb, spmv<scalar_t>, c.data_ptr<int32_t>(), j.data_ptr<int32_t>(),
                                 values.data_ptr<scalar_t>(), bias.defined() ? bias.data_ptr<scalar_t>() : nullptr,
                                 xc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), m, k, pb))
        raise_bad_index(op, "crow_indices", c, "col_indices", j, k);
      return out;
    }
    const scalar_t* xp;
    if (keep_panels) {
      panels = cpu::empty_output({panel_elems<scalar_t>(n, k)}, x.options());
      xp = pack_into<scalar_t>(x, panels.data_ptr<scalar_t>());
    } else {
      xp = pack<scalar_t>(x, Scratch::a);
    }
    at::Tensor out = cpu::empty_output({n, m}, x.options());  // written row-major by the kernel
    const int pb = panel_bytes_of<scalar_t>(n);
    if (!GRANET_CSR_PANEL_CALL(pb, spmm<scalar_t>, c.data_ptr<int32_t>(), j.data_ptr<int32_t>(), values.data_ptr<scalar_t>(),
                               bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, xp, out.data_ptr<scalar_t>(), n, m,
                               k, pb))
      raise_bad_index(op, "crow_indices", c, "col_indices", j, k);
    return out;
  });
  return {y, panels};
}

}  // namespace

at::Tensor csr_spmm_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, const at::Tensor& x) {
  return std::get<0>(csr_forward("granet::csr_spmm", crow, col, values, x, std::nullopt, false));
}

at::Tensor csr_linear_cpu(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                          const std::optional<at::Tensor>& bias) {
  return std::get<0>(csr_forward("granet::csr_linear", crow, col, values, x, bias, false));
}

std::tuple<at::Tensor, at::Tensor> csr_linear_panels_cpu(const at::Tensor& x, const at::Tensor& crow,
                                                         const at::Tensor& col, const at::Tensor& values,
                                                         const std::optional<at::Tensor>& bias) {
  return csr_forward("granet::csr_linear", crow, col, values, x, bias, true);
}

at::Tensor csr_spmm_t_cpu(const at::Tensor& ccol, const at::Tensor& row, const at::Tensor& perm,
                          const at::Tensor& values, const at::Tensor& dy) {
  constexpr const char* op = "granet::csr_spmm_t";
  check_csc_args(op, ccol, row, perm, values, dy);
  const int64_t n = dy.size(0), m = dy.size(1), k = ccol.numel() - 1;
  const at::Tensor cc = ccol.contiguous(), r = row.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "granet_csr_spmm_t_cpu", [&] {
    const scalar_t* w_csc = csc_values<scalar_t>(op, values, perm);
    const scalar_t* dyp = pack<scalar_t>(dy, Scratch::a);
    at::Tensor dx = cpu::empty_output({n, k}, dy.options());
    const int pb = panel_bytes_of<scalar_t>(n);
    if (!GRANET_CSR_PANEL_CALL(pb, backward<scalar_t>, cc.data_ptr<int32_t>(), r.data_ptr<int32_t>(), w_csc, dyp,
                               nullptr, dx.data_ptr<scalar_t>(), nullptr, n, m, k, true, false, pb))
      raise_bad_index(op, "ccol_indices", cc, "row_indices", r, m);
    return dx;
  });
}

at::Tensor csr_sddmm_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& dy, const at::Tensor& x) {
  constexpr const char* op = "granet::csr_sddmm";
  check_dense(op, "dy", dy);
  check_dense(op, "x", x);
  check_cpu(op, x);
  check_same_device(op, x, {&crow, &col, &dy});
  TORCH_CHECK_VALUE(dy.scalar_type() == x.scalar_type(), op, ": dy dtype ", dy.scalar_type(), " does not match x dtype ",
                    x.scalar_type());
  TORCH_CHECK_VALUE(dy.size(0) == x.size(0), op, ": dy and x must have the same batch size");
  TORCH_CHECK_VALUE(dy.size(1) == crow.numel() - 1, op, ": dy.shape[1] must be len(crow_indices) - 1 = ",
                    crow.numel() - 1, ", got ", dy.size(1));
  check_compressed(op, "crow_indices", crow, "col_indices", col, x.size(1));
  const int64_t n = x.size(0), k = x.size(1), m = dy.size(1);
  const at::Tensor c = crow.contiguous(), j = col.contiguous();
  at::Tensor dw = cpu::empty_output({col.numel()}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "granet_csr_sddmm_cpu", [&] {
    const scalar_t* dyp = pack<scalar_t>(dy, Scratch::a);
    const scalar_t* xp = pack<scalar_t>(x, Scratch::b);
    GRANET_ISA_CALL_AT_MOST_AVX2(sddmm<scalar_t>, c.data_ptr<int32_t>(), j.data_ptr<int32_t>(), dyp, xp, dw.data_ptr<scalar_t>(), n,
                    m, k, panel_bytes_of<scalar_t>(n));
  });
  return dw;
}

namespace {

// (dx, dvalues, dbias): dbias (the column sums of dy) only with `bias_grad`, summed while dy is packed.
// Whether a batch of n rows takes the CSR-order backward (csr_backward_rows) when the CSR index is at
// hand: when the batch fits one 128-byte panel (32 fp32 rows). There the CSC backward's value gather
// and dW scatter cost more than the products: W 4096^2, 1 thread, Zen 3, rows / CSC + gather + scatter,
// ms: batch 16 4.5 / 8.4 (d = 0.05), 21.1 / 63.1 (0.2); batch 32 9.2 / 12.5, 36.4 / 73.1; at batch 64
// (two panels) 13.6 / 12.8 and 81.4 / 92.3, batch 96 23.6 / 18.4 (d = 0.05). GRANET_CSR_ROWS_BACKWARD_MAX_N
// sets the largest batch instead (0: never), for benchmarks.
bool rows_backward(int64_t n, int64_t elem_size) {
  static const int64_t forced = [] {
    const char* env = std::getenv("GRANET_CSR_ROWS_BACKWARD_MAX_N");
    return env == nullptr ? int64_t(-1) : static_cast<int64_t>(std::atoll(env));
  }();
  return forced >= 0 ? n <= forced : n * elem_size <= 128;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward(const char* op, const at::Tensor& ccol,
                                                               const at::Tensor& row, const at::Tensor& perm,
                                                               const at::Tensor& values, const at::Tensor& dy,
                                                               const at::Tensor& x, bool bias_grad,
                                                               const std::optional<at::Tensor>& x_panels_in,
                                                               const std::optional<at::Tensor>& crow_in = std::nullopt,
                                                               const std::optional<at::Tensor>& col_in = std::nullopt) {
  check_csc_args(op, ccol, row, perm, values, dy);
  check_dense(op, "x", x);
  check_same_device(op, dy, {&x});
  TORCH_CHECK_VALUE(x.scalar_type() == dy.scalar_type(), op, ": x dtype ", x.scalar_type(), " does not match dy dtype ",
                    dy.scalar_type());
  TORCH_CHECK_VALUE(x.size(0) == dy.size(0), op, ": x and dy must have the same batch size");
  TORCH_CHECK_VALUE(x.size(1) == ccol.numel() - 1, op, ": x.shape[1] must be len(ccol_indices) - 1 = ",
                    ccol.numel() - 1, ", got ", x.size(1));
  const int64_t n = dy.size(0), m = dy.size(1), k = x.size(1);
  const bool by_rows = crow_in.has_value() && crow_in->defined() && col_in.has_value() && col_in->defined() &&
                       rows_backward(n, dy.element_size());
  at::Tensor crow, col;
  if (by_rows) {
    crow = crow_in->contiguous();
    col = col_in->contiguous();
    check_same_device(op, dy, {&crow, &col});
    TORCH_CHECK_VALUE(crow.dim() == 1 && crow.numel() == m + 1, op, ": crow_indices must be 1-D with dy.shape[1] + 1 = ",
                      m + 1, " entries, got shape ", crow.sizes());
    TORCH_CHECK_VALUE(col.dim() == 1 && col.numel() == values.numel(), op,
                      ": col_indices must be 1-D with one entry per value (", values.numel(), "), got shape ",
                      col.sizes());
    // col's range is checked by the kernel as it reads it
    check_compressed_pointers(op, "crow_indices", crow, "col_indices", col, k);
  }
  const at::Tensor cc = ccol.contiguous(), r = row.contiguous(), pc = perm.contiguous();
  at::Tensor dvalues = cpu::empty_output({row.numel()}, dy.options());
  at::Tensor dbias = bias_grad ? at::empty({m}, dy.options()) : at::Tensor();
  at::Tensor dx = AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "granet_csr_linear_backward_cpu", [&] {
#ifdef _OPENMP
    const int threads = omp_get_max_threads();
#else
    const int threads = 1;
#endif
    if (by_rows && n == 1) {  // one row: x and dy read in place, no panels (x_panels, if any, unused)
      const at::Tensor xc = x.contiguous(), dyc = dy.contiguous(), v = values.contiguous();
      at::Tensor grad_x = cpu::empty_output({n, k}, dy.options());
      scalar_t* bufs = cpu::scratch_of<scalar_t>(Scratch::c, static_cast<size_t>(threads) * k);
      if (!GRANET_ISA_CALL_AT_MOST_AVX2(backward_one_row<scalar_t>, crow.data_ptr<int32_t>(), col.data_ptr<int32_t>(),
                                        v.data_ptr<scalar_t>(), dyc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(),
                                        grad_x.data_ptr<scalar_t>(), dvalues.data_ptr<scalar_t>(), bufs, threads, m,
                                        k))
        raise_bad_index(op, "crow_indices", crow, "col_indices", col, k);
      if (bias_grad) dbias.copy_(dyc.reshape({m}));
      return grad_x;
    }
    const int64_t bt = panel_bytes_of<scalar_t>(n) / static_cast<int64_t>(sizeof(scalar_t));
    const int64_t n_panels = (n + bt - 1) / bt;
    scalar_t* sums = bias_grad ? cpu::scratch_of<scalar_t>(Scratch::f, n_panels * m) : nullptr;
    const scalar_t* dyp = pack<scalar_t>(dy, Scratch::a, sums);
    const scalar_t* xp = nullptr;
    if (x_panels_in.has_value() && x_panels_in->defined()) {  // x as the forward packed it
      const at::Tensor& xpt = *x_panels_in;
      TORCH_CHECK_VALUE(xpt.device().is_cpu() && xpt.scalar_type() == dy.scalar_type() && xpt.dim() == 1 &&
                            xpt.is_contiguous() && xpt.numel() == panel_elems<scalar_t>(n, k),
                        op, ": x_panels must be the contiguous 1-D ", dy.scalar_type(), " CPU tensor of ",
                        panel_elems<scalar_t>(n, k), " entries that the forward packed x into, got shape ",
                        xpt.sizes(), ", dtype ", xpt.scalar_type(), " on ", xpt.device());
      xp = xpt.data_ptr<scalar_t>();
      // The length fits any batch packed into as many panels: x's first and last rows must be in
      // the lanes this batch puts them in (panels of another batch or another x would not be).
      TORCH_CHECK_VALUE(panels_hold_rows<scalar_t>(xp, x, bt), op,
                        ": x_panels does not hold x (packed from another batch or another input?)");
    } else {
      xp = pack<scalar_t>(x, Scratch::b);
    }
    at::Tensor grad_x = cpu::empty_output({n, k}, dy.options());
    if (by_rows) {  // values and dvalues in their own (CSR) order: no gather, no scatter
      const at::Tensor v = values.contiguous();
      scalar_t* bufs = cpu::scratch_of<scalar_t>(Scratch::c, static_cast<size_t>(threads) * k * bt);
      if (!GRANET_ISA_CALL_AT_MOST_AVX2(backward_rows<scalar_t>, crow.data_ptr<int32_t>(), col.data_ptr<int32_t>(),
                                        v.data_ptr<scalar_t>(), dyp, xp, grad_x.data_ptr<scalar_t>(),
                                        dvalues.data_ptr<scalar_t>(), bufs, threads, n, m, k,
                                        panel_bytes_of<scalar_t>(n)))
        raise_bad_index(op, "crow_indices", crow, "col_indices", col, k);
    } else {
      const scalar_t* w_csc = csc_values<scalar_t>(op, values, perm);
      scalar_t* dw_csc = cpu::scratch_of<scalar_t>(Scratch::e, row.numel());
      const int pb = panel_bytes_of<scalar_t>(n);
      if (!GRANET_CSR_PANEL_CALL(pb, backward<scalar_t>, cc.data_ptr<int32_t>(), r.data_ptr<int32_t>(), w_csc, dyp,
                                 xp, grad_x.data_ptr<scalar_t>(), dw_csc, n, m, k, true, true, pb))
        raise_bad_index(op, "ccol_indices", cc, "row_indices", r, m);
      // Gradients go back in CSR order, the order of the values. perm is a checked-in-range
      // permutation built with the index; dvalues is written at every perm[s].
      if (row.numel() > 0) dvalues.zero_();
      GRANET_ISA_CALL(scatter_values<scalar_t>, dw_csc, pc.data_ptr<int32_t>(), dvalues.data_ptr<scalar_t>(),
                      row.numel());
    }
    if (bias_grad) {  // panel partial sums, added in panel order: deterministic
      scalar_t* db = dbias.data_ptr<scalar_t>();
      for (int64_t i = 0; i < m; ++i) db[i] = n_panels > 0 ? sums[i] : scalar_t(0);
      for (int64_t p = 1; p < n_panels; ++p)
        for (int64_t i = 0; i < m; ++i) db[i] += sums[p * m + i];
    }
    return grad_x;
  });
  return {dx, dvalues, dbias};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> csr_linear_backward_cpu(const at::Tensor& ccol, const at::Tensor& row,
                                                           const at::Tensor& perm, const at::Tensor& values,
                                                           const at::Tensor& dy, const at::Tensor& x) {
  auto [dx, dvalues, unused] =
      linear_backward("granet::csr_linear_backward", ccol, row, perm, values, dy, x, false, std::nullopt);
  return {dx, dvalues};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_linear_backward_bias_cpu(const at::Tensor& ccol,
                                                                            const at::Tensor& row,
                                                                            const at::Tensor& perm,
                                                                            const at::Tensor& values,
                                                                            const at::Tensor& dy, const at::Tensor& x,
                                                                            const std::optional<at::Tensor>& x_panels,
                                                                            const std::optional<at::Tensor>& crow,
                                                                            const std::optional<at::Tensor>& col) {
  return linear_backward("granet::csr_linear", ccol, row, perm, values, dy, x, true, x_panels, crow, col);
}

}  // namespace granet
