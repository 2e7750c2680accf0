"""The schedules of GRANET.md: pruning/regrowth events, the cubic density curve, the cosine prune rate."""

from __future__ import annotations

import math

from granet_kernels.pruning.config import FIXED_DENSITY_METHODS, GraNetConfig


class Schedule:
    """Step-indexed schedule (steps count optimizer steps from 1). Event k happens at step k*dT."""

    def __init__(self, config: GraNetConfig):
        self.config = config
        per_epoch, dt = config.iters_per_epoch, config.update_frequency
        self.k0 = int(config.init_prune_epoch * per_epoch / dt)
        self.kf = int(config.final_prune_epoch * per_epoch / dt)
        self.total_steps = config.total_steps

    def event_index(self, step: int) -> int | None:
        """k when `step` is an event step (a multiple of dT at or after t0), else None."""
        dt = self.config.update_frequency
        if step <= 0 or step % dt:
            return None
        k = step // dt
        return k if k >= self.k0 else None

    def prunes_at(self, step: int) -> bool:
        """Global (or layer-wise) magnitude pruning happens at events k0 <= k <= kf - 1."""
        if self.config.method not in ("granet", "gmp"):
            return False
        k = self.event_index(step)
        return k is not None and k <= self.kf - 1

    def regrows_at(self, step: int) -> bool:
        """Drop + regrowth happens at every event from t0 to the end of training."""
        if self.config.method not in ("granet", "rigl", "set"):
            return False
        return self.event_index(step) is not None

    def is_event(self, step: int) -> bool:
        return self.prunes_at(step) or self.regrows_at(step)

    def density_at(self, step: int) -> float:
        """Target global density after the event at (or last event before) `step`:
        d_k = d_f + (d_i - d_f) * (1 - (k - k0) / (kf - k0))^3 for k0 <= k <= kf - 1."""
        c = self.config
        if c.method in FIXED_DENSITY_METHODS:
            return float(c.final_density)
        last_event = min(max(step, 0) // c.update_frequency, self.kf - 1)
        if last_event < max(self.k0, 1):
            return float(c.init_density)  # no pruning event yet (step 0 is never an event)
        return self._cubic(last_event)

    def _cubic(self, k: int) -> float:
        c = self.config
        frac = (k - self.k0) / (self.kf - self.k0)
        return float(c.final_density + (c.init_density - c.final_density) * (1.0 - frac) ** 3)

    def prune_rate_at(self, step: int) -> float:
        """r(t) = r_min + (r0 - r_min) * (1 + cos(pi * t / T)) / 2, T = total training iterations."""
        c = self.config
        t = min(max(step, 0), self.total_steps)
        return float(c.prune_rate_min + (c.prune_rate - c.prune_rate_min) * (1 + math.cos(math.pi * t / self.total_steps)) / 2)
