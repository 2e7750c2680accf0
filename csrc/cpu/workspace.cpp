#include "cpu/workspace.h"

#include <cstdlib>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace granet {
namespace cpu {

namespace {

struct Buffers {
  void* ptr[static_cast<int>(Scratch::count)] = {};
  std::size_t size[static_cast<int>(Scratch::count)] = {};
  ~Buffers() {
    for (void* p : ptr) std::free(p);
  }
};

thread_local Buffers buffers;

constexpr std::size_t kHuge = std::size_t(2) << 20;

}  // namespace

void* scratch(Scratch slot, std::size_t bytes) {
  const int i = static_cast<int>(slot);
  if (bytes == 0) bytes = 64;
  if (buffers.size[i] < bytes) {
    std::free(buffers.ptr[i]);
    buffers.ptr[i] = nullptr;
    buffers.size[i] = 0;
    // Grow with headroom so slowly growing shapes do not reallocate every call.
    // Buffers of 2 MB and more are 2 MB-aligned with transparent huge pages requested: the kernels
    // read panel rows at random, and a 4 KB page per row visit thrashes the TLB.
    const std::size_t align = bytes >= kHuge ? kHuge : 64;
    const std::size_t want = ((bytes + bytes / 8 + align - 1) / align) * align;
    void* p = std::aligned_alloc(align, want);
    if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == kHuge) madvise(p, want, MADV_HUGEPAGE);
#endif
    buffers.ptr[i] = p;
    buffers.size[i] = want;
  }
  return buffers.ptr[i];
}

}  // namespace cpu
}  // namespace granet
