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
// cache (2 MB-aligned with transparent huge pages requested from 2 MB up). At most
// GRANET_CPU_OUTPUT_CACHE_MB (default 256) of freed blocks are kept; 0 keeps none. The tensor is an
// ordinary resizable CPU tensor; its storage returns the block to the cache when freed.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

constexpr std::size_t kPooledMinBytes = std::size_t(1) << 20;

}  // namespace cpu
}  // namespace granet
