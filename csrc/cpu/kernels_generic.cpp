// Baseline x86-64 / any-architecture build of the CPU kernels.
#define GRANET_ISA generic
#include "cpu/kernels_impl.h"
