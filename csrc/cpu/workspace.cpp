#include "cpu/workspace.h"

#include <cstdlib>
#include <new>

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

}  // namespace

void* scratch(Scratch slot, std::size_t bytes) {
  const int i = static_cast<int>(slot);
  if (bytes == 0) bytes = 64;
  if (buffers.size[i] < bytes) {
    std::free(buffers.ptr[i]);
    buffers.ptr[i] = nullptr;
    buffers.size[i] = 0;
    // Grow with headroom so slowly growing shapes do not reallocate every call.
    const std::size_t want = ((bytes + bytes / 8 + 63) / 64) * 64;
    void* p = std::aligned_alloc(64, want);
    if (p == nullptr) throw std::bad_alloc();
    buffers.ptr[i] = p;
    buffers.size[i] = want;
  }
  return buffers.ptr[i];
}

}  // namespace cpu
}  // namespace granet
