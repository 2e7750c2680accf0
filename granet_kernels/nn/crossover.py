"""Which layout `layout="auto"` picks: the densities below which the sparse kernels beat dense,
as measured by benchmarks/bench_linear.py and benchmarks/bench_conv.py (BENCHMARKS.md).

Above the crossover the masked-dense layout runs dense BLAS on the masked weight, so a sparse
module is never slower than its dense counterpart by more than the masking itself.
"""

from __future__ import annotations

import torch

# Training-step crossovers on the CPU (fp32, 1 thread; AMD EPYC Zen 3, see BENCHMARKS.md): CSR is
# used strictly below these densities. Linear, W 4096^2, batch 256, interleaved with dense (CSR x
# dense, 2026-11-25 19:30-19:45, several runs): 1.55 / 1.39 at 0.2, 1.38 at 0.225, 1.09 / 0.89 /
# 1.10 at 0.25, 0.71 at 0.275, 0.74-1.04 at 0.3, while masked gave 0.88-1.01: the crossover is near
# 0.25 (an earlier run, 14:03, had CSR 1.11x at 0.3; the CSR step at these densities moves more
# with the machine's memory load than dense does). Conv: CSR measured 1.44x dense at 0.5 (3x3, 256
# channels) and 1.63x (1x1, 1024->256), the highest density measured.
CPU_CSR_MAX_DENSITY = {"linear": 0.25, "conv": 0.5}
# Small linear weights: the CSR step's index and value arrays (about 28 bytes per nonzero) stay in
# the last-level cache, and CSR keeps winning to a higher density. Measured 2026-11-25 (19:30), W
# 1024^2, batch 256: CSR 1.37x / 1.35x dense at 0.3 / 0.35 (masked 0.94x), 0.84x at 0.4; W 2048^2:
# CSR 0.72x / 0.65x at 0.3 / 0.35, so the wider range stops at 2^20 weights.
CPU_CSR_MAX_DENSITY_SMALL_LINEAR = 0.36
SMALL_LINEAR_NUMEL = 1 << 20
# Medium linear weights (up to 2^22 entries: 1024x4096, 2048^2, 768x3072) sit between the two:
# measured 2026-11-26 (07:10, batch 256, CSR / masked x dense, same process): d = 0.25 1.44-1.63 /
# 0.94-0.98, 0.275 1.36-1.56 / 0.90-1.01, 0.29 1.06-1.43 / 0.93-0.99, 0.3 0.84-1.13 / 0.89-1.06,
# 0.35 0.68-0.88 / 0.84-1.00 (W 4096^2 in the same runs: CSR 1.51 / 1.15 / 0.98 against masked
# 1.23 / 1.25 / 0.98 at 0.25 / 0.275 / 0.29, so the large-weight limit stays).
CPU_CSR_MAX_DENSITY_MEDIUM_LINEAR = 0.3
MEDIUM_LINEAR_NUMEL = 1 << 22


def choose_layout(kind: str, density: float, device: torch.device, dtype: torch.dtype,
                  numel: int | None = None) -> str:
    """The layout for a weight of this kind ("linear" / "conv"), density, device and dtype; `numel`
    (the dense weight's element count) lets small and medium linear weights stay CSR to a higher
    density."""
    device = torch.device(device)
    if device.type == "cpu" and dtype in (torch.float32, torch.float64):
        limit = CPU_CSR_MAX_DENSITY[kind]
        if kind == "linear" and numel is not None and numel <= SMALL_LINEAR_NUMEL:
            limit = CPU_CSR_MAX_DENSITY_SMALL_LINEAR
        elif kind == "linear" and numel is not None and numel <= MEDIUM_LINEAR_NUMEL:
            limit = CPU_CSR_MAX_DENSITY_MEDIUM_LINEAR
        return "csr" if density < limit else "masked"
    # GPU: the masked layout (Triton masked matmul) until the sparse GPU kernels are measured.
    return "masked"
