#include "cpu/output_pool.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace granet {
namespace cpu {

namespace {

constexpr std::size_t kHugePage = std::size_t(2) << 20;

// Free blocks by size. Never destroyed: tensors may outlive static destruction at interpreter exit.
class Pool final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t bytes) override {
    const std::size_t want = round_up(bytes);
    void* p = take(want);
    if (p == nullptr) p = fresh(want);
    return {p, new Block{p, want}, &Pool::give_back, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }

 private:
  struct Block {
    void* ptr;
    std::size_t bytes;
  };

  // Sizes in 64 KB steps below 8 MB (at most 6% over the request), whole huge pages above (at most
  // 25%), so that similar requests share blocks without wasting much memory.
  static std::size_t round_up(std::size_t bytes) {
    const std::size_t step = bytes >= 4 * kHugePage ? kHugePage : std::size_t(64) << 10;
    return (bytes + step - 1) / step * step;
  }

  // Cached bytes above which freed blocks go back to the system (GRANET_CPU_OUTPUT_CACHE_MB, default 256).
  static std::size_t limit() {
    static const std::size_t mb = [] {
      const char* env = std::getenv("GRANET_CPU_OUTPUT_CACHE_MB");
      return env == nullptr ? std::size_t(256) : static_cast<std::size_t>(std::strtoull(env, nullptr, 10));
    }();
    return mb << 20;
  }

  // The smallest cached block that fits, if it is at most a quarter larger than the request.
  void* take(std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.lower_bound(bytes);
    if (it == free_.end() || it->first > bytes + bytes / 4) return nullptr;
    void* p = it->second;
    cached_ -= it->first;
    free_.erase(it);
    return p;
  }

  // 2 MB-aligned, with transparent huge pages requested (advice only), from 2 MB up.
  static void* fresh(std::size_t bytes) {
    const bool huge = bytes >= kHugePage;
    void* p = nullptr;
    if (posix_memalign(&p, huge ? kHugePage : 64, bytes) != 0 || p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge) madvise(p, bytes / kHugePage * kHugePage, MADV_HUGEPAGE);
#endif
    return p;
  }

  static void give_back(void* ctx) {
    Block* b = static_cast<Block*>(ctx);
    instance().put(b->ptr, b->bytes);
    delete b;
  }

  void put(void* p, std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (cached_ + bytes > limit()) {
      std::free(p);
      return;
    }
    free_.emplace(bytes, p);
    cached_ += bytes;
  }

 public:
  static Pool& instance() {
    static Pool* pool = new Pool();
    return *pool;
  }

 private:
  std::mutex mu_;
  std::multimap<std::size_t, void*> free_;
  std::size_t cached_ = 0;
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  std::size_t bytes = options.dtype().itemsize();
  for (const int64_t s : sizes) bytes *= static_cast<std::size_t>(s < 0 ? 0 : s);
  if (bytes < kPooledMinBytes || !options.device().is_cpu()) return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, &Pool::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
}


}  // namespace cpu
}  // namespace granet
