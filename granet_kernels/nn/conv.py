"""SparseConv2d: a drop-in nn.Conv2d (groups=1) whose filter bank is sparse (masked-dense or CSR)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from granet_kernels import ops
from granet_kernels.nn._sparse import SparseWeightMixin, carry_module_state
from granet_kernels.nn.linear import _initial_mask


def _padding(padding, kernel_size, dilation, stride):
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' needs stride 1")
            total = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
            if any(t % 2 for t in total):
                raise ValueError("padding='same' with an even effective kernel size needs asymmetric padding; "
                                 "give explicit padding instead")
            return tuple(t // 2 for t in total)
        raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    return _pair(padding)


class SparseConv2d(SparseWeightMixin, nn.Module):
    """conv2d with a sparse filter bank. `layout`: "auto" (by density), "masked" or "csr"."""

    kind = "conv"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1, groups: int = 1,
                 bias: bool = True, padding_mode: str = "zeros", *, mask: torch.Tensor | None = None,
                 density: float | None = None, layout: str = "auto", device=None, dtype=None,
                 generator: torch.Generator | None = None):
        super().__init__()
        dense = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
                          device=device, dtype=dtype)
        self._copy_geometry(dense)
        self.bias = dense.bias
        mask = _initial_mask(self.weight_shape, mask, density, dense.weight.device, generator)
        self._init_sparse(dense.weight, mask, layout, 1)

    def _copy_geometry(self, conv: nn.Conv2d) -> None:
        if conv.groups != 1:
            raise ValueError(f"SparseConv2d supports groups=1 only, got groups={conv.groups}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"SparseConv2d supports padding_mode='zeros' only, got {conv.padding_mode!r}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.dilation = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.dilation)
        self.padding = _padding(conv.padding, self.kernel_size, self.dilation, self.stride)
        self.groups, self.padding_mode = 1, "zeros"

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    @classmethod
    def from_dense(cls, module: nn.Conv2d, mask: torch.Tensor | None = None, density: float | None = None,
                   layout: str = "auto", generator: torch.Generator | None = None) -> "SparseConv2d":
        """A SparseConv2d with `module`'s weights at `mask` (or a random mask of `density`; default all)."""
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"module must be an nn.Conv2d, got {type(module).__name__}")
        out = cls.__new__(cls)
        nn.Module.__init__(out)
        out._copy_geometry(module)
        out.bias = None if module.bias is None else nn.Parameter(module.bias.detach().clone())
        mask = _initial_mask(out.weight_shape, mask, density, module.weight.device, generator)
        out._init_sparse(module.weight.detach().clone(), mask, layout, 1)
        carry_module_state(module, out)
        return out

    def to_dense(self) -> nn.Conv2d:
        """A plain nn.Conv2d holding the masked weights."""
        w = self.weight
        dense = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
                          bias=self.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return carry_module_state(self, dense)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"SparseConv2d: input must be a torch.Tensor, got {type(input).__name__}")
        unbatched = input.dim() == 3
        if unbatched:
            input = input.unsqueeze(0)
        if input.dim() != 4 or input.shape[1] != self.in_channels:
            raise ValueError(f"SparseConv2d: input must be [N, {self.in_channels}, H, W] (or unbatched "
                             f"[{self.in_channels}, H, W]), got shape {tuple(input.shape)}")
        if input.dtype != self.weight.dtype:
            raise TypeError(f"SparseConv2d: input dtype {input.dtype} does not match the weight's {self.weight.dtype}")
        if input.device != self.weight.device:
            raise ValueError(f"SparseConv2d: input is on {input.device} but the weight is on {self.weight.device}")
        if self.layout == "masked":
            y = ops.masked_conv2d(input, self.weight, self.weight_mask, self.stride, self.padding, self.dilation,
                                  self.bias)
        else:
            y = ops.sparse_conv2d(input, self.crow_indices, self.col_indices, self.weight, self.kernel_size, self.stride,
                                  self.padding, self.dilation, self.bias)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        return s + ", " + self._sparse_repr()
