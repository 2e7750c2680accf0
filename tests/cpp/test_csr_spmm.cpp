// C++ test of the native CSR SpMM (y[N, M] = x[N, K] @ W^T, W an M x K CSR matrix with int32
// indices), built by CMakeLists.txt and run by ctest. Each case is a random CSR matrix (float and
// double; empty rows, a batch of 1, sizes off the 8/32 multiples) computed twice: through the
// dispatcher (granet::_native_csr_spmm, registered by the static initialisers of ops.cpp, so this also
// checks that the registration survived linking) and directly (granet::csr_spmm_cpu), both compared
// with a dense at::matmul reference. Invalid indices must raise a c10::Error, not crash. With the
// CUDA kernels built and a GPU present, the cases run on the GPU as well.
// Prints one result line; exit status 0 when every check passes, 1 otherwise.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "cpu/isa.h"
#include "granet.h"

namespace {

using SpmmFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);

int g_checks = 0;
int g_failures = 0;

void expect(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  }
}

struct Csr {
  at::Tensor crow, col, values;  // int32 [M+1], int32 [nnz], dtype [nnz]
  int64_t m = 0, k = 0;
};

// Random M x K CSR matrix: each row keeps each column with probability `density`, except the rows
// listed in `empty_rows` (and every row when density == 0), which stay empty. Column indices are
// sorted within a row, as torch's CSR layout has them.
Csr random_csr(int64_t m, int64_t k, double density, const std::vector<int64_t>& empty_rows, at::ScalarType dtype,
               std::mt19937& rng) {
  std::bernoulli_distribution keep(density);
  std::vector<int32_t> crow{0}, col;
  for (int64_t i = 0; i < m; ++i) {
    bool empty = false;
    for (int64_t e : empty_rows) empty = empty || e == i;
    if (!empty) {
      for (int64_t j = 0; j < k; ++j) {
        if (keep(rng)) col.push_back(static_cast<int32_t>(j));
      }
    }
    crow.push_back(static_cast<int32_t>(col.size()));
  }
  Csr w;
  w.m = m;
  w.k = k;
  const auto i32 = at::TensorOptions().dtype(at::kInt);
  w.crow = at::from_blob(crow.data(), {static_cast<int64_t>(crow.size())}, i32).clone();
  w.col = at::from_blob(col.data(), {static_cast<int64_t>(col.size())}, i32).clone();
  w.values = at::randn({static_cast<int64_t>(col.size())}, at::TensorOptions().dtype(dtype));
  return w;
}

// Dense M x K copy of W: values scattered to the flat positions row * K + col.
at::Tensor to_dense(const Csr& w) {
  const at::Tensor counts = (w.crow.slice(0, 1) - w.crow.slice(0, 0, w.m)).to(at::kLong);
  const at::Tensor rows = at::repeat_interleave(at::arange(w.m, at::kLong), counts);
  const at::Tensor flat = rows * w.k + w.col.to(at::kLong);
  at::Tensor dense = at::zeros({w.m * w.k}, w.values.options());
  dense.scatter_(0, flat, w.values);
  return dense.view({w.m, w.k});
}

bool close(const at::Tensor& got, const at::Tensor& want, double rtol, double atol) {
  return got.sizes() == want.sizes() && got.scalar_type() == want.scalar_type() &&
         (got.numel() == 0 || at::allclose(got, want, rtol, atol));
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || a.numel() == 0) return 0.0;
  return (a - b).abs().max().item<double>();
}

struct Case {
  const char* name;
  int64_t n, m, k;
  double density;
  std::vector<int64_t> empty_rows;
  bool strided_x = false;  // x given as a non-contiguous (transposed) view
};

// The case on `device` (CPU, or CUDA when built with the CUDA kernels and a GPU is present): the
// dispatcher's kernel and the device's entry point, both against the dense reference from the CPU.
void run_case(const Case& c, at::ScalarType dtype, const c10::TypedOperatorHandle<SpmmFn>& op, std::mt19937& rng,
              at::DeviceType device) {
  const std::string label = std::string(c.name) + " [" + c10::DeviceTypeName(device, true) + " " +
                            c10::toString(dtype) + ", N=" + std::to_string(c.n) + " M=" + std::to_string(c.m) +
                            " K=" + std::to_string(c.k) + "]";
  const Csr w = random_csr(c.m, c.k, c.density, c.empty_rows, dtype, rng);
  const auto opts = at::TensorOptions().dtype(dtype);
  const at::Tensor x = c.strided_x ? at::randn({c.k, c.n}, opts).t() : at::randn({c.n, c.k}, opts);
  const at::Tensor want = at::matmul(x, to_dense(w).t());
  const double rtol = dtype == at::kFloat ? 1e-4 : 1e-10;
  const double atol = dtype == at::kFloat ? 1e-4 : 1e-10;
  try {
    const at::Tensor crow = w.crow.to(device), col = w.col.to(device), values = w.values.to(device);
    const at::Tensor xd = x.to(device);  // stays a strided view on the CPU
    const at::Tensor via_dispatcher = op.call(crow, col, values, xd).cpu();
    expect(close(via_dispatcher, want, rtol, atol),
           label + ": dispatcher result differs from the dense reference, max |diff| = " +
               std::to_string(max_abs_diff(via_dispatcher, want)));
    at::Tensor direct;
    std::string entry = "csr_spmm_cpu";
    if (device == at::kCPU) {
      direct = granet::csr_spmm_cpu(crow, col, values, xd);
    } else {
#ifdef GRANET_WITH_CUDA
      entry = "csr_spmm_cuda";
      direct = granet::csr_spmm_cuda(crow, col, values, xd).cpu();
#endif
    }
    expect(close(direct, want, rtol, atol), label + ": " + entry + " result differs from the dense reference, max |diff| = " +
                                                std::to_string(max_abs_diff(direct, want)));
  } catch (const std::exception& e) {
    expect(false, label + ": threw " + e.what());
  }
}

// An invalid index must raise a c10::Error (a Python exception in the extension), not crash.
template <typename Fn>
void expect_c10_error(const std::string& label, Fn fn) {
  try {
    fn();
    expect(false, label + ": no exception");
  } catch (const c10::Error& e) {
    expect(true, label);
  } catch (const std::exception& e) {
    expect(false, label + ": threw a non-c10 exception: " + e.what());
  }
}

void check_bad_indices(const c10::TypedOperatorHandle<SpmmFn>& op, std::mt19937& rng, at::DeviceType device) {
  const std::string dev = c10::DeviceTypeName(device, true);
  const Csr w = random_csr(9, 13, 0.5, {}, at::kFloat, rng);
  const at::Tensor x = at::randn({3, 13}).to(device), values = w.values.to(device);
  for (int32_t bad : {13, 1000, -1}) {
    at::Tensor col_cpu = w.col.clone();
    col_cpu.data_ptr<int32_t>()[col_cpu.numel() / 2] = bad;
    const at::Tensor crow = w.crow.to(device), col = col_cpu.to(device);
    const std::string which = " col_indices entry " + std::to_string(bad) + " (K = 13)";
    expect_c10_error(dev + " dispatcher rejects" + which, [&] { op.call(crow, col, values, x); });
    if (device == at::kCPU) {
      expect_c10_error("csr_spmm_cpu rejects" + which, [&] { granet::csr_spmm_cpu(crow, col, values, x); });
    }
  }
  at::Tensor crow_cpu = w.crow.clone();
  crow_cpu.data_ptr<int32_t>()[crow_cpu.numel() - 1] = static_cast<int32_t>(w.col.numel() + 5);
  const at::Tensor crow = crow_cpu.to(device), col = w.col.to(device);
  expect_c10_error(dev + " dispatcher rejects crow_indices[-1] != nnz", [&] { op.call(crow, col, values, x); });
  expect_c10_error(dev + " dispatcher rejects int64 crow_indices",
                   [&] { op.call(crow.to(at::kLong), col, values, x); });
}

}  // namespace

int main() {
  const char* cuda_status = "cuda not built";
  try {
    at::manual_seed(0);
    std::mt19937 rng(12345);
    const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("granet::_native_csr_spmm", "").typed<SpmmFn>();
    expect(op.hasKernelForDispatchKey(c10::DispatchKey::CPU), "granet::_native_csr_spmm has a CPU kernel");

    const std::vector<Case> cases = {
        {"batch of 1", 1, 37, 53, 0.2, {0, 5, 36}},
        {"odd sizes", 33, 65, 129, 0.1, {1, 2, 3, 64}},
        {"batch past a panel", 70, 17, 300, 0.05, {16}},
        {"exact panels", 64, 32, 64, 0.3, {}},
        {"dense rows", 31, 7, 41, 1.0, {3}},
        {"no nonzeros", 5, 11, 9, 0.0, {}},
        {"all rows empty but one", 9, 25, 19, 0.4, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18, 19,
                                                     20, 21, 22, 23, 24}},
        {"strided x", 45, 23, 77, 0.15, {7}, true},
        {"empty batch", 0, 12, 10, 0.3, {}},
        {"no rows", 6, 0, 10, 0.3, {}},
    };
    for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
      for (const Case& c : cases) run_case(c, dtype, op, rng, at::kCPU);
    }
    check_bad_indices(op, rng, at::kCPU);
#ifdef GRANET_WITH_CUDA
    if (at::hasCUDA()) {
      cuda_status = "cuda tested";
      expect(op.hasKernelForDispatchKey(c10::DispatchKey::CUDA), "granet::_native_csr_spmm has a CUDA kernel");
      for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
        for (const Case& c : cases) run_case(c, dtype, op, rng, at::kCUDA);
      }
      check_bad_indices(op, rng, at::kCUDA);
    } else {
      cuda_status = "cuda built, no GPU: skipped";
    }
#endif
  } catch (const std::exception& e) {
    expect(false, std::string("unexpected exception: ") + e.what());
  }
  const char* isa = granet::cpu::isa_name(granet::cpu::active_isa());
  std::printf("test_csr_spmm (cpu isa %s, %s): %d checks, %d failed: %s\n", isa, cuda_status, g_checks, g_failures,
              g_failures == 0 ? "PASS" : "FAIL");
  return g_failures == 0 ? 0 : 1;
}
