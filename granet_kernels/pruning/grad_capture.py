"""The dense weight gradient of a sparse layer, produced only at event steps.

Regrowth ranks inactive positions by |dL/dW| of the event step's minibatch. A CSR/BSR layer never
forms that dense gradient; when the engine asks (one step ahead), a forward hook keeps the layer's
input and a hook on its output computes dW = dy^T x (linear) or conv2d_weight(x, dy) (conv) in that
step's backward, and only then."""

from __future__ import annotations

import torch
from torch import nn

from granet_kernels.nn import SparseConv2d, SparseLinear


class DenseGradCapture:
    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.enabled = False
        self.grads: dict[str, torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def arm(self, enabled: bool) -> None:
        self.enabled = bool(enabled)
        self.grads = {}

    def _hook(self, name: str):
        def forward_hook(module, inputs, output):
            if not self.enabled or not torch.is_grad_enabled() or not output.requires_grad:
                return
            x = inputs[0].detach()

            def on_grad(grad_output):
                dense = _dense_weight_grad(module, x, grad_output.detach())
                previous = self.grads.get(name)
                self.grads[name] = dense if previous is None else previous + dense

            output.register_hook(on_grad)

        return forward_hook


def _dense_weight_grad(module: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    if isinstance(module, SparseLinear):
        x2 = x.reshape(-1, module.in_features)
        dy2 = dy.reshape(-1, module.out_features)
        return dy2.transpose(0, 1) @ x2
    if isinstance(module, SparseConv2d):
        if x.dim() == 3:
            x, dy = x.unsqueeze(0), dy.unsqueeze(0)
        return torch.nn.grad.conv2d_weight(x, module.weight_shape, dy, module.stride, module.padding, module.dilation)
    raise TypeError(f"no dense gradient rule for {type(module).__name__}")
