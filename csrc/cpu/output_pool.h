// Output tensors of the CPU kernels from a small cache of large blocks.
//
// glibc hands multi-megabyte requests to mmap (or trims them back off the heap) and the pages come
// back zero-filled through a page fault each: on the project's VM a fresh 4 MB output cost ~3 ms of
// faults, as much as a whole sparse product at 2% density, every time a training step allocated it.
// Blocks here are kept when their tensor dies and handed to the next request of a similar size.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>

namespace granet {
namespace cpu {

// at::empty(sizes, options) for a CPU tensor; requests of at least kPooledMinBytes come from the
// cache (2 MB-aligned, transparent huge pages requested). The tensor is an ordinary resizable CPU
// tensor; its storage returns the block to the cache when freed.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Bytes held by blocks not in use (for tests), and releasing them all.
std::size_t output_pool_cached_bytes();
void output_pool_release();

constexpr std::size_t kPooledMinBytes = std::size_t(1) << 20;

}  // namespace cpu
}  // namespace granet
