"""Which layout `layout="auto"` picks: the densities below which the sparse kernels beat dense,
as measured by benchmarks/bench_linear.py and benchmarks/bench_conv.py (BENCHMARKS.md).

Above the crossover the masked-dense layout runs dense BLAS on the masked weight, so a sparse
module is never slower than its dense counterpart by more than the masking itself.
"""

from __future__ import annotations

import torch

# Training-step crossovers on the CPU (fp32, 1 thread; AMD EPYC Zen 3, see BENCHMARKS.md): CSR is
# used strictly below these densities. Linear (W 4096^2 and 1024^2, batch 256, 2026-11-25 14:03):
# CSR 1.11x / 1.23x dense at 0.3, 0.42x / 0.53x at 0.5, so masked from 0.3 up. Conv: CSR measured
# 1.44x dense at 0.5 (3x3, 256 channels) and 1.63x (1x1, 1024->256), the highest density measured.
CPU_CSR_MAX_DENSITY = {"linear": 0.3, "conv": 0.5}


def choose_layout(kind: str, density: float, device: torch.device, dtype: torch.dtype) -> str:
    device = torch.device(device)
    if device.type == "cpu" and dtype in (torch.float32, torch.float64):
        return "csr" if density < CPU_CSR_MAX_DENSITY[kind] else "masked"
    # GPU: the masked layout (Triton masked matmul) until the sparse GPU kernels are measured.
    return "masked"
