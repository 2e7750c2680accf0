// Polyphase planes of an NCHW input, for strided convolutions at small batches (nn/conv.py): a
// convolution at stride s is one at stride 1 over the s*s phase planes of the zero-padded input, which
// the CPU engine can run with pixels in its vector lanes. torch's pixel_unshuffle (after a pad) does
// the same copy through a 6-D permute: ~1 GB/s, as long as the sparse convolution itself at batch 1.
#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

#include "granet.h"

namespace granet {

namespace {

void check_operand(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 4 && t.device().is_cpu(), op, ": ", name, " must be a 4-D CPU tensor, got shape ",
                    t.sizes(), " on ", t.device());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
                    " must be float32 or float64, got ", t.scalar_type());
}

void check_geometry(const char* op, int64_t stride, int64_t pad_h, int64_t pad_w) {
  TORCH_CHECK_VALUE(stride >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK_VALUE(pad_h >= 0 && pad_w >= 0, op, ": padding must be >= 0, got (", pad_h, ", ", pad_w, ")");
}

// For plane coordinate i and phase a: the source row s*i + a - pad, or -1 outside [0, size).
inline int64_t source(int64_t i, int64_t a, int64_t s, int64_t pad, int64_t size) {
  const int64_t r = s * i + a - pad;
  return r >= 0 && r < size ? r : -1;
}

template <typename T>
void split(const T* src, T* dst, int64_t images, int64_t h, int64_t w, int64_t s, int64_t pad_h, int64_t pad_w,
           int64_t out_h, int64_t out_w) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t p = 0; p < images; ++p)
    for (int64_t ab = 0; ab < s * s; ++ab) {
      const int64_t a = ab / s, b = ab % s;
      const T* plane = src + p * h * w;
      T* o = dst + (p * s * s + ab) * out_h * out_w;
      for (int64_t i = 0; i < out_h; ++i) {
        const int64_t r = source(i, a, s, pad_h, h);
        T* row = o + i * out_w;
        if (r < 0) {
          std::memset(row, 0, sizeof(T) * out_w);
          continue;
        }
        const T* in = plane + r * w;
        for (int64_t j = 0; j < out_w; ++j) {
          const int64_t q = s * j + b - pad_w;
          row[j] = q >= 0 && q < w ? in[q] : T(0);
        }
      }
    }
}

// The adjoint: every element of out [images, h, w] is one element of the planes (or 0 where it was
// cropped: rows / columns past the planes).
template <typename T>
void merge(const T* src, T* dst, int64_t images, int64_t ph, int64_t pw, int64_t s, int64_t pad_h, int64_t pad_w,
           int64_t h, int64_t w) {
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < images; ++p)
    for (int64_t r = 0; r < h; ++r) {
      // row r is row i of phase a, where s*i + a = r + pad
      const int64_t i = (r + pad_h) / s, a = (r + pad_h) % s;
      T* row = dst + (p * h + r) * w;
      if (i >= ph) {
        std::memset(row, 0, sizeof(T) * w);
        continue;
      }
      for (int64_t q = 0; q < w; ++q) {
        const int64_t j = (q + pad_w) / s, b = (q + pad_w) % s;
        row[q] = j < pw ? src[((p * s * s + a * s + b) * ph + i) * pw + j] : T(0);
      }
    }
}

}  // namespace

at::Tensor polyphase_split_cpu(const at::Tensor& x_in, int64_t s, int64_t pad_h, int64_t pad_w, int64_t out_h,
                               int64_t out_w) {
  constexpr const char* op = "granet::_native_polyphase_split";
  check_operand(op, "x", x_in);
  check_geometry(op, s, pad_h, pad_w);
  TORCH_CHECK_VALUE(out_h >= 0 && out_w >= 0, op, ": plane size must be >= 0, got (", out_h, ", ", out_w, ")");
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  at::Tensor out = at::empty({n, c * s * s, out_h, out_w}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "granet_polyphase_split", [&] {
    split<scalar_t>(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n * c, h, w, s, pad_h, pad_w, out_h, out_w);
  });
  return out;
}

at::Tensor polyphase_merge_cpu(const at::Tensor& planes_in, int64_t s, int64_t pad_h, int64_t pad_w, int64_t h,
                               int64_t w) {
  constexpr const char* op = "granet::_native_polyphase_merge";
  check_operand(op, "planes", planes_in);
  check_geometry(op, s, pad_h, pad_w);
  TORCH_CHECK_VALUE(h >= 0 && w >= 0, op, ": output size must be >= 0, got (", h, ", ", w, ")");
  TORCH_CHECK_VALUE(planes_in.size(1) % (s * s) == 0, op, ": planes.shape[1] must be a multiple of stride^2 = ",
                    s * s, ", got ", planes_in.size(1));
  const at::Tensor planes = planes_in.contiguous();
  const int64_t n = planes.size(0), c = planes.size(1) / (s * s), ph = planes.size(2), pw = planes.size(3);
  at::Tensor out = at::empty({n, c, h, w}, planes.options());
  AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "granet_polyphase_merge", [&] {
    merge<scalar_t>(planes.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n * c, ph, pw, s, pad_h, pad_w, h, w);
  });
  return out;
}

}  // namespace granet
