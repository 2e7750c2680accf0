// Per-thread scratch buffers that outlive a call. Kernels pack operands into batch panels on every
// call; a fresh multi-megabyte allocation costs its page faults each time (~3 ms per 4 MB measured
// on the project's VM, as much as a whole sparse product at 2% density), a reused buffer none.
#pragma once

#include <cstddef>

namespace granet {
namespace cpu {

// Scratch slots of one call; a kernel uses distinct slots for buffers that live at the same time.
enum class Scratch { a = 0, b, c, d, e, f, count };

// 64-byte aligned buffer of at least `bytes` bytes for this thread and slot. Valid until the next
// request of the same slot on the same thread; not zeroed.
void* scratch(Scratch slot, std::size_t bytes);

template <typename T>
T* scratch_of(Scratch slot, std::size_t elems) {
  return static_cast<T*>(scratch(slot, elems * sizeof(T)));
}

}  // namespace cpu
}  // namespace granet
