"""Deterministic selection on unit scores: the global keep set, top among active, regrowth.

Ties are broken by position (layer order, then flat index: lower first) so that every rank of a
distributed run and every resumed run make the same choice."""

from __future__ import annotations

from typing import Sequence

import torch

from granet_kernels.ops import selection


def global_keep(scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], keep: int) -> list[torch.Tensor]:
    """Masks keeping exactly `keep` active units over all layers: the largest scores, ties by position.

    Inactive units score 0 (their weights are zero) and lose every tie against active ones."""
    active_total = sum(int(m.sum()) for m in masks)
    if keep >= active_total:
        return [m.clone() for m in masks]
    if keep <= 0:
        return [torch.zeros_like(m) for m in masks]
    threshold = selection.topk_threshold([s.detach() for s in scores], keep)
    above = [(s.abs() > threshold) & m for s, m in zip(scores, masks)]
    need = keep - sum(int(a.sum()) for a in above)
    out = []
    for s, m, a in zip(scores, masks, above):
        ties = (s.abs() == threshold) & m
        if need > 0:
            flat = ties.reshape(-1)
            positions = torch.nonzero(flat).reshape(-1)[:need]
            chosen = torch.zeros_like(flat)
            chosen[positions] = True
            a = a | chosen.reshape(a.shape)
            need -= positions.numel()
        out.append(a)
    return out


def top_active(score: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Mask of the `keep` active units with the largest |score| (ties: lower index)."""
    keep = max(0, min(int(keep), int(mask.sum())))
    chosen = selection.regrow(~mask, score, keep)
    return _from_indices(chosen, mask)


def regrow(score: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the `count` inactive units with the largest |score| (ties: lower index)."""
    chosen = selection.regrow(mask, score, int(count))
    return _from_indices(chosen, mask)


def _from_indices(indices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(like.numel(), dtype=torch.bool, device=like.device)
    out[indices] = True
    return out.reshape(like.shape)
