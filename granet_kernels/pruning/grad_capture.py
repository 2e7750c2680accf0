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
                return None
            # The output goes through an identity whose backward sees dL/dy. It returns a copy, so
            # an in-place op on the layer's output (ReLU(inplace=True)) leaves the capture intact;
            # the copy is made at event steps only.
            return _Capture.apply(output, inputs[0].detach(), module, self, name)

        return forward_hook

    def add(self, name: str, grad: torch.Tensor) -> None:
        previous = self.grads.get(name)
        self.grads[name] = grad if previous is None else previous + grad


class _Capture(torch.autograd.Function):
    @staticmethod
    def forward(ctx, output, x, module, capture, name):
        ctx.x, ctx.module, ctx.capture, ctx.name = x, module, capture, name
        return output.clone()

    @staticmethod
    def backward(ctx, grad_output):
        ctx.capture.add(ctx.name, _dense_weight_grad(ctx.module, ctx.x, grad_output.detach()))
        return grad_output, None, None, None, None


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
