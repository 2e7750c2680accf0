"""FLOP accounting as the RigL / GraNet papers count it.

Per sample, a linear or conv layer costs its dense multiply-adds times its density in the forward;
a training step costs 3x the forward (forward, dx, dW), and a step where the engine needs the dense
weight gradient pays the dense dW instead of the sparse one. Layers other than linear/conv (norms,
pooling, activations) are left out, as the papers do. Sizes are taken from the first forward seen."""

from __future__ import annotations

import math

import torch
from torch import nn

from granet_kernels.nn import SparseConv2d, SparseLinear

_COUNTED = (nn.Linear, nn.Conv2d, SparseLinear, SparseConv2d)


def dense_macs_per_sample(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Multiply-adds of the dense layer for one sample (the first dimension is the batch)."""
    if isinstance(module, (nn.Linear, SparseLinear)):
        rows = x.numel() // max(module.in_features, 1)
        batch = x.shape[0] if x.dim() > 1 else 1
        return rows * module.in_features * module.out_features // max(batch, 1)
    # A conv weight [out, in/groups, kh, kw] costs its size once per output position.
    weight_numel = math.prod(module.weight_shape) if isinstance(module, SparseConv2d) else module.weight.numel()
    return weight_numel * y.shape[-1] * y.shape[-2]


def module_density(module: nn.Module) -> float:
    return module.density if isinstance(module, (SparseLinear, SparseConv2d)) else 1.0


class FlopMeter:
    """Records each linear/conv layer's dense cost per sample on its first forward."""

    def __init__(self, model: nn.Module):
        self.modules = {name: m for name, m in model.named_modules() if isinstance(m, _COUNTED)}
        self.macs: dict[str, int] = {}
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in self.modules.items()]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if name not in self.macs and isinstance(inputs[0], torch.Tensor):
                self.macs[name] = dense_macs_per_sample(module, inputs[0], output)
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _cost(self, name: str, module: nn.Module) -> int:
        # Before any forward: the weight's size stands in for the per-sample cost.
        if name in self.macs:
            return self.macs[name]
        return math.prod(module.weight_shape) if isinstance(module, (SparseLinear, SparseConv2d)) else module.weight.numel()

    def forward_macs(self) -> tuple[float, float]:
        """(sparse, dense) multiply-adds per sample of one forward pass at the current densities."""
        sparse = dense = 0.0
        for name, module in self.modules.items():
            cost = self._cost(name, module)
            dense += cost
            sparse += cost * module_density(module)
        return sparse, dense

    def dense_grad_extra_macs(self) -> float:
        """Extra multiply-adds per sample of a step that forms the dense weight gradients."""
        return sum(self._cost(n, m) * (1.0 - module_density(m)) for n, m in self.modules.items()
                   if isinstance(m, (SparseLinear, SparseConv2d)))

    def state_dict(self) -> dict:
        return {"macs": dict(self.macs)}

    def load_state_dict(self, state: dict) -> None:
        self.macs.update(state.get("macs", {}))
