// CSR SpMM on the GPU: y[N, M] = x[N, K] @ W^T with W an M x K CSR matrix.
//
// One warp per sparse row; the row's indices and values are read 32 at a time (one per lane) and
// broadcast with warp shuffles, so the dense operand is read with coalesced loads along the batch.
// The batch is the fast axis of the operand (x^T, [K, N]) and of the result (y^T, [M, N]).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "granet.h"

namespace granet {

namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kColsPerLane = 4;  // batch columns per lane: 128 per warp

template <typename T>
__global__ void csr_spmm_rows_kernel(const int32_t* __restrict__ crow, const int32_t* __restrict__ col,
                                     const T* __restrict__ values, const T* __restrict__ xt, T* __restrict__ yt,
                                     int64_t m, int64_t n) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (row >= m) return;
  const int lane = threadIdx.x;
  const int64_t n_base = static_cast<int64_t>(blockIdx.y) * (32 * kColsPerLane) + lane;

  T acc[kColsPerLane];
#pragma unroll
  for (int t = 0; t < kColsPerLane; ++t) acc[t] = T(0);

  const int32_t start = crow[row], end = crow[row + 1];
  for (int32_t chunk = start; chunk < end; chunk += 32) {
    const int32_t q = chunk + lane;
    const int32_t my_col = q < end ? col[q] : 0;
    const T my_val = q < end ? values[q] : T(0);
    const int count = min(32, end - chunk);
    for (int j = 0; j < count; ++j) {
      const int64_t c = __shfl_sync(0xffffffff, my_col, j);
      const T v = __shfl_sync(0xffffffff, my_val, j);
      const T* x_row = xt + c * n;
#pragma unroll
      for (int t = 0; t < kColsPerLane; ++t) {
        const int64_t nn = n_base + t * 32;
        if (nn < n) acc[t] += v * x_row[nn];
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kColsPerLane; ++t) {
    const int64_t nn = n_base + t * 32;
    if (nn < n) yt[row * n + nn] = acc[t];
  }
}

}  // namespace

at::Tensor csr_spmm_cuda(const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& values_in,
                         const at::Tensor& x_in) {
  constexpr const char* op = "granet::csr_spmm";
  check_csr_spmm_args(op, crow_in, col_in, values_in, x_in);
  TORCH_CHECK_VALUE(x_in.is_cuda(), op, ": the CUDA kernel needs CUDA tensors, got x on ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());

  const at::Tensor crow = crow_in.contiguous(), col = col_in.contiguous(), values = values_in.contiguous();
  const int64_t n = x_in.size(0), m = crow.numel() - 1;
  const at::Tensor xt = x_in.t().contiguous();  // [K, N]
  at::Tensor yt = at::empty({m, n}, x_in.options());
  if (m == 0 || n == 0) return yt.t();

  const dim3 block(32, kWarpsPerBlock);
  const int64_t grid_y = (n + 32 * kColsPerLane - 1) / (32 * kColsPerLane);
  TORCH_CHECK_VALUE(grid_y <= 65535, op, ": batch N = ", n, " is too large for one launch");
  const dim3 grid(static_cast<unsigned>((m + kWarpsPerBlock - 1) / kWarpsPerBlock), static_cast<unsigned>(grid_y));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x_in.scalar_type(), "granet_csr_spmm_cuda", [&] {
    csr_spmm_rows_kernel<scalar_t><<<grid, block, 0, stream>>>(crow.data_ptr<int32_t>(), col.data_ptr<int32_t>(),
                                                               values.data_ptr<scalar_t>(), xt.data_ptr<scalar_t>(),
                                                               yt.data_ptr<scalar_t>(), m, n);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return yt.t().contiguous();
}

}  // namespace granet
