"""Per-parameter optimizer state of a sparse weight: zeroed where the mask is off, carried across
a repack (kept weights keep their state, new ones start at 0), rebound when a Parameter is replaced.

Supported: SGD (momentum, Nesterov), Adam, AdamW. Their per-parameter tensors shaped like the
parameter (momentum_buffer, exp_avg, exp_avg_sq, max_exp_avg_sq) are handled; scalar entries
(Adam's step) are left as they are."""

from __future__ import annotations

import torch

SUPPORTED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def check_optimizer(optimizer) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not isinstance(optimizer, SUPPORTED):
        raise TypeError(f"optimizer {type(optimizer).__name__} is not supported by GraNet: it remaps the "
                        f"per-parameter state of SGD, Adam and AdamW only")


def shaped_state(optimizer, param: torch.Tensor) -> dict[str, torch.Tensor]:
    """The state tensors of `param` that have its shape (one value per stored weight)."""
    state = optimizer.state.get(param, {})
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.shape == param.shape and v.dim() > 0}


@torch.no_grad()
def apply_mask_(optimizer, param: torch.Tensor, layout_mask: torch.Tensor | None) -> None:
    """param and its state <- themselves * mask (exact zeros where the mask is off)."""
    if layout_mask is None:
        return
    param.mul_(layout_mask)
    for value in shaped_state(optimizer, param).values():
        value.mul_(layout_mask)


def swap_parameter(optimizer, old: torch.Tensor, new: torch.Tensor, convert=None) -> None:
    """Replace `old` by `new` in the optimizer's groups; carry its state (through `convert` for the
    tensors shaped like `old`)."""
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
    if old in optimizer.state:
        state = optimizer.state.pop(old)
        if convert is not None:
            state = {k: (convert(v) if isinstance(v, torch.Tensor) and v.shape == old.shape and v.dim() > 0 else v)
                     for k, v in state.items()}
        optimizer.state[new] = state
