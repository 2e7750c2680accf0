"""Which layout `layout="auto"` picks: the densities below which the sparse kernels beat dense,
as measured by benchmarks/bench_linear.py and benchmarks/bench_conv.py (BENCHMARKS.md).

Above the crossover the masked-dense layout runs dense BLAS on the masked weight, so a sparse
module is never slower than its dense counterpart by more than the masking itself.

The crossover depends on the CPU: where the dense BLAS is fast relative to the sparse kernels' memory
traffic, CSR stops winning earlier. Each table below was measured on one CPU family; a CPU none of
them was measured on gets the most conservative one (`DEFAULT`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from granet_kernels import _native

SMALL_LINEAR_NUMEL = 1 << 20
MEDIUM_LINEAR_NUMEL = 1 << 22


@dataclass(frozen=True)
class Crossovers:
    """Training-step densities (fp32, 1 thread) strictly below which CSR is used on the CPU."""

    measured_on: str
    linear: float  # linear weights of more than MEDIUM_LINEAR_NUMEL entries
    linear_medium: float  # up to MEDIUM_LINEAR_NUMEL entries
    linear_small: float  # up to SMALL_LINEAR_NUMEL entries: CSR arrays that stay in cache
    conv: float

    def limit(self, kind: str, numel: int | None) -> float:
        if kind == "conv":
            return self.conv
        if numel is not None and numel <= SMALL_LINEAR_NUMEL:
            return self.linear_small
        if numel is not None and numel <= MEDIUM_LINEAR_NUMEL:
            return self.linear_medium
        return self.linear


# AMD EPYC Zen 3 (AVX2, 2026-11-25/26). Linear, W 4096^2, batch 256, interleaved with dense (CSR x
# dense, several runs): 1.55 / 1.39 at 0.2, 1.38 at 0.225, 1.09 / 0.89 / 1.10 at 0.25, 0.71 at 0.275,
# 0.74-1.04 at 0.3, while masked gave 0.88-1.01. W 1024^2: CSR 1.37x / 1.35x at 0.3 / 0.35 (masked
# 0.94x), 0.84x at 0.4; W 2048^2: 0.72x / 0.65x at 0.3 / 0.35. Medium weights (1024x4096, 2048^2,
# 768x3072): CSR 1.44-1.63 / 0.94-0.98 (masked) at 0.25, 1.36-1.56 at 0.275, 1.06-1.43 at 0.29,
# 0.84-1.13 at 0.3. Conv: CSR 1.44x dense at 0.5 (3x3, 256 channels, batch 64), 1.63x (1x1,
# 1024->256); the limit is 0.45 because VGG's 3x3 512->512 at 2x2 (batch 128) runs CSR at only
# 0.93x / 1.03x dense at 0.5 / 0.45 (measured on Zen 5, whose 3x3-256 ratio is the higher one).
ZEN3 = Crossovers("AMD EPYC Zen 3 (AVX2)", linear=0.25, linear_medium=0.3, linear_small=0.36, conv=0.45)

# AMD EPYC Zen 5 (family 0x1A, AVX-512 with 512-bit data paths, 1 MB L2 per core; 2026-11-26). Its
# MKL runs the dense step 1.5x faster than Zen 3's, the CSR step 2x faster. Linear, batch 256, CSR /
# masked x dense in one process: W 4096^2 1.80 / 1.08 at 0.4, 1.45 / 1.08 at 0.5, 1.20 at 0.6, 1.01 at
# 0.7; 2048^2 1.58 / 0.98 at 0.4, 1.06 / 0.97 at 0.5, 0.91 at 0.6; 1024x4096 and 768x3072 1.75-1.77 at
# 0.4, 1.34 at 0.5; 1024^2 1.72 at 0.4, 1.34 at 0.5; 512^2 1.69 at 0.4, 1.43 at 0.5 (masked 0.95-0.98
# at all of these). Small batches at W 4096^2, d = 0.4: CSR step 2.8x / 3.1x / 2.3x dense at batch
# 1 / 8 / 32 (masked 3.4x / 3.3x / 1.4x). Conv (batch 64 / 128): 3x3 256->256 1.65x at 0.5, 1x1
# 1024->256 1.49x, 3x3 512->512 at 4x4 1.24x at 0.45, at 2x2 1.03x at 0.45, 0.93x at 0.5.
ZEN5 = Crossovers("AMD EPYC Zen 5 (AVX-512)", linear=0.45, linear_medium=0.45, linear_small=0.45, conv=0.45)

DEFAULT = ZEN3


def crossovers_for(vendor: str, family: int, isa: str) -> Crossovers:
    """The table for a CPU of this vendor id, family and active kernel ISA."""
    if vendor == "AuthenticAMD" and family >= 0x1A and isa == "avx512":
        return ZEN5
    return DEFAULT


def cpu_identity() -> tuple[str, int]:
    """(vendor id, family) of this CPU, from /proc/cpuinfo; ("", 0) where that cannot be read."""
    vendor, family = "", 0
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "vendor_id" and not vendor:
                    vendor = value
                elif key == "cpu family" and not family:
                    family = int(value) if value.isdigit() else 0
                if vendor and family:
                    break
    except OSError:
        pass
    return vendor, family


@functools.cache
def cpu_crossovers() -> Crossovers:
    """The crossover table `layout="auto"` uses on this machine's CPU."""
    return crossovers_for(*cpu_identity(), _native.cpu_isa())


def choose_layout(kind: str, density: float, device: torch.device, dtype: torch.dtype,
                  numel: int | None = None) -> str:
    """The layout for a weight of this kind ("linear" / "conv"), density, device and dtype; `numel`
    (the dense weight's element count) lets small and medium linear weights stay CSR to a higher
    density where the table says so."""
    device = torch.device(device)
    if device.type == "cpu" and dtype in (torch.float32, torch.float64):
        return "csr" if density < cpu_crossovers().limit(kind, numel) else "masked"
    # GPU: the masked layout (Triton masked matmul) until the sparse GPU kernels are measured.
    return "masked"
