"""GraNetConfig: every knob of the paper, named after the reference code's flags."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

METHODS = ("granet", "gmp", "rigl", "set", "static")
GROWTH = ("gradient", "random")
SPARSE_INITS = ("ERK", "ER", "uniform")

# Methods that keep the density fixed at final_density from the first step (no pruning events).
FIXED_DENSITY_METHODS = ("rigl", "set", "static")


@dataclass
class GraNetConfig:
    """Configuration of the GraNet engine and its baselines.

    method: "granet" (gradual global magnitude pruning + neuroregeneration), "gmp" (pruning only),
      "rigl" (drop + gradient regrowth at fixed density), "set" (drop + random regrowth at fixed
      density), "static" (fixed mask). The fixed-density methods start at `final_density`
      (`init_density` is ignored for them).
    init_density / final_density: d_i and d_f (d_i = 1.0 is dense-to-sparse).
    sparse_init: per-layer distribution of the initial density, "ERK", "ER" or "uniform".
    init_prune_epoch / final_prune_epoch: t0 and tf of the pruning schedule, in epochs (fractions
      allowed); with iters_per_epoch = 1 they are steps.
    total_epochs, iters_per_epoch: the length of training (T = total_epochs * iters_per_epoch
      iterations, the period of the prune-rate cosine).
    update_frequency: Delta T, iterations between events.
    prune_rate / prune_rate_min: r0 and r_min of the cosine decay of the drop fraction.
    global_prune: global magnitude ranking across layers (the paper); False prunes each layer by
      the same factor, keeping the initial distribution.
    block_size: 1 = unstructured; b > 1 prunes and regrows b x b blocks of the [out, in*kh*kw]
      weight matrix (ranked by the sum of |w| / |grad| in the block).
    dense_first_layer: leave the first prunable layer dense.
    growth: "gradient" (the paper) or "random" (ablation) for granet/rigl; "set" always uses random.
    layout: layout policy of the sparse modules ("auto", "masked", "csr", "bsr").
    seed: seeds the initial masks and random regrowth (identical on every rank).
    zero_dropped_regrown: a weight dropped and regrown at the same event restarts at 0 (the
      paper's intent); False keeps its old value and optimizer state (the reference code's quirk).
    """

    method: str = "granet"
    init_density: float = 0.5
    final_density: float = 0.1
    sparse_init: str = "ERK"
    init_prune_epoch: float = 0.0
    final_prune_epoch: float = 80.0
    total_epochs: float = 160.0
    iters_per_epoch: int = 1
    update_frequency: int = 1000
    prune_rate: float = 0.5
    prune_rate_min: float = 0.005
    global_prune: bool = True
    block_size: int = 1
    dense_first_layer: bool = False
    growth: str = "gradient"
    layout: str = "auto"
    seed: int = 0
    zero_dropped_regrown: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison below
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        inits = {s.lower(): s for s in SPARSE_INITS}
        if str(self.sparse_init).lower() not in inits:
            raise ValueError(f"sparse_init must be one of {', '.join(SPARSE_INITS)}, got {self.sparse_init!r}")
        self.sparse_init = inits[str(self.sparse_init).lower()]
        for name in ("init_density", "final_density"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if self.method in ("granet", "gmp") and self.final_density > self.init_density:
            raise ValueError(f"final_density ({self.final_density}) must not exceed init_density ({self.init_density}) "
                             f"for method {self.method!r}")
        if self.init_prune_epoch < 0:
            raise ValueError(f"init_prune_epoch must be >= 0, got {self.init_prune_epoch}")
        if self.final_prune_epoch < self.init_prune_epoch:
            raise ValueError(f"final_prune_epoch ({self.final_prune_epoch}) must be >= init_prune_epoch "
                             f"({self.init_prune_epoch})")
        if not self.total_epochs > 0:
            raise ValueError(f"total_epochs must be > 0, got {self.total_epochs}")
        for name in ("iters_per_epoch", "update_frequency", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.prune_rate_min <= self.prune_rate <= 1.0:
            raise ValueError(f"need 0 <= prune_rate_min <= prune_rate <= 1, got prune_rate={self.prune_rate}, "
                             f"prune_rate_min={self.prune_rate_min}")
        if self.growth not in GROWTH:
            raise ValueError(f"growth must be one of {', '.join(GROWTH)}, got {self.growth!r}")
        if self.layout not in ("auto", "masked", "csr", "bsr"):
            raise ValueError(f"layout must be one of auto, masked, csr, bsr, got {self.layout!r}")
        if self.total_steps < 1:
            raise ValueError(f"total_epochs * iters_per_epoch must be at least one step, got "
                             f"{self.total_epochs} * {self.iters_per_epoch}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @property
    def start_density(self) -> float:
        """Density of the initial masks."""
        return self.final_density if self.method in FIXED_DENSITY_METHODS else self.init_density

    @property
    def total_steps(self) -> int:
        return int(self.total_epochs * self.iters_per_epoch)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GraNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown GraNetConfig fields: {', '.join(unknown)}")
        return cls(**values)
