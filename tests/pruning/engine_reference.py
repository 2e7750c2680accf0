"""A brute-force GraNet event (sorting, no kernels) to check the engine against."""

from __future__ import annotations

import math

import torch


def _order(score: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Flat positions sorted by: eligible first, then larger |score|, then lower position."""
    flat, ok = score.reshape(-1).abs().double(), eligible.reshape(-1)
    order = torch.arange(flat.numel())
    order = order[torch.sort(-flat[order], stable=True).indices]
    return order[torch.sort((~ok[order]).to(torch.int8), stable=True).indices]


def global_keep(weights, masks, keep):
    sizes = [w.numel() for w in weights]
    score = torch.cat([w.reshape(-1) for w in weights])
    active = torch.cat([m.reshape(-1) for m in masks])
    chosen = torch.zeros_like(active)
    chosen[_order(score, active)[: min(keep, int(active.sum()))]] = True
    return [c.reshape(m.shape) for c, m in zip(torch.split(chosen, sizes), masks)]


def top_active(score, mask, keep):
    chosen = torch.zeros(mask.numel(), dtype=torch.bool)
    chosen[_order(score, mask)[:keep]] = True
    return chosen.reshape(mask.shape)


def event(weights, masks, grads, *, density=None, rate=None):
    """(new masks, masks of the weights that keep their values) of one GraNet event."""
    kept = list(masks)
    if density is not None:
        total = sum(w.numel() for w in weights)
        kept = global_keep(weights, masks, int(total * density))
    if rate is None:
        return kept, kept
    new, after = [], []
    for w, m, g in zip(weights, kept, grads):
        n = int(m.sum())
        drop = math.ceil(rate * n)
        a = top_active(w, m, n - drop)
        grown = top_active(g, ~a, drop)
        new.append(a | grown)
        after.append(a)
    return new, after
