"""Per-layer densities for a global density: uniform, ER and ERK (as GraNet/RigL compute them)."""

from __future__ import annotations

import math
from typing import Sequence

INITS = ("erk", "er", "uniform")


def _raw(shape: Sequence[int], init: str) -> float:
    if init == "erk":
        return sum(shape) / math.prod(shape)
    # ER: fan-in + fan-out over their product, kernel dims left out.
    n_out, n_in = shape[0], shape[1]
    return (n_in + n_out) / (n_in * n_out)


def layer_densities(shapes: Sequence[Sequence[int]], density: float, init: str = "erk") -> list[float]:
    """Density of each weight (given by its shape) so that the whole set has `density`.

    ERK/ER: density_l = eps * raw_l, with the layers whose density would exceed 1 made dense
    and eps recomputed, repeatedly, exactly as the reference code does.
    """
    init = init.lower()
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if init == "uniform" or density == 1.0:
        return [float(density)] * len(shapes)
    sizes = [math.prod(s) for s in shapes]
    raw = [_raw(s, init) for s in shapes]
    dense: set[int] = set()
    while True:
        rhs = sum(density * n for i, n in enumerate(sizes) if i not in dense)
        rhs -= sum((1 - density) * n for i, n in enumerate(sizes) if i in dense)
        divisor = sum(raw[i] * n for i, n in enumerate(sizes) if i not in dense)
        if divisor == 0:
            break
        eps = rhs / divisor
        max_raw = max(raw[i] for i in range(len(sizes)) if i not in dense)
        if max_raw * eps <= 1:
            break
        dense |= {i for i in range(len(sizes)) if i not in dense and raw[i] == max_raw}
    return [1.0 if i in dense else eps * raw[i] for i in range(len(sizes))]
