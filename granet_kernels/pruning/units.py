"""Pruning units of a weight: single weights (block_size 1) or b x b blocks of its [out, in*kh*kw]
matrix. Selection (threshold, drop, regrow) runs on unit scores; masks are expanded back."""

from __future__ import annotations

import math

import torch

from granet_kernels.formats import padded


class Units:
    def __init__(self, weight_shape, block_size: int):
        self.weight_shape = tuple(weight_shape)
        self.rows, self.cols = weight_shape[0], math.prod(weight_shape[1:])
        self.b = int(block_size)
        self.grid = (padded(self.rows, self.b) // self.b, padded(self.cols, self.b) // self.b)

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the unit grid (the weight matrix itself for block size 1)."""
        return self.grid if self.b > 1 else (self.rows, self.cols)

    @property
    def numel(self) -> int:
        return self.grid[0] * self.grid[1] if self.b > 1 else self.rows * self.cols

    def _blocks(self, dense: torch.Tensor) -> torch.Tensor:
        b = self.b
        matrix = dense.reshape(self.rows, self.cols)
        full = matrix.new_zeros(self.grid[0] * b, self.grid[1] * b)
        full[: self.rows, : self.cols] = matrix
        return full.reshape(self.grid[0], b, self.grid[1], b)

    def score(self, dense: torch.Tensor) -> torch.Tensor:
        """Per-unit magnitude: |x| (block size 1) or the sum of |x| over each block."""
        if self.b == 1:
            return dense.reshape(self.rows, self.cols).abs()
        return self._blocks(dense.abs()).sum(dim=(1, 3))

    def mask(self, dense_mask: torch.Tensor) -> torch.Tensor:
        """Unit mask: a unit is active when any of its weights is."""
        if self.b == 1:
            return dense_mask.reshape(self.rows, self.cols)
        return self._blocks(dense_mask).any(dim=3).any(dim=1)

    def expand(self, unit_mask: torch.Tensor) -> torch.Tensor:
        """Dense-shaped bool mask from a unit mask."""
        if self.b == 1:
            return unit_mask.reshape(self.weight_shape)
        b = self.b
        full = unit_mask[:, None, :, None].expand(self.grid[0], b, self.grid[1], b)
        return full.reshape(self.grid[0] * b, self.grid[1] * b)[: self.rows, : self.cols].reshape(self.weight_shape)

    def random_mask(self, count: int, generator: torch.Generator, device) -> torch.Tensor:
        """Dense mask with exactly `count` units active, drawn uniformly."""
        chosen = torch.randperm(self.numel, generator=generator)[:count]
        units = torch.zeros(self.numel, dtype=torch.bool)
        units[chosen] = True
        return self.expand(units.reshape(self.shape)).to(device)
