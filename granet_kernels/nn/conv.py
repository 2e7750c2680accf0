"""SparseConv2d: a drop-in nn.Conv2d (groups=1) whose filter bank is sparse (masked-dense or CSR)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from granet_kernels import ops
from granet_kernels.ops._checks import version_token
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


# Strided convolutions at small batches. The CPU engine puts pixels in the vector lanes only at
# stride 1 (images otherwise, so batch 1 fills one lane in 8); a strided convolution is rewritten as
# one at stride 1 over the input's polyphase planes (pixel_unshuffle): input row s*i + ky is row
# i + ky // s of phase ky % s, so each nonzero (o, c, ky, kx) becomes (o, (c*s + ky%s)*s + kx%s,
# ky//s, kx//s) of a kernel ceil(k/s) wide, the same values in another order. 1x1 kernels without
# padding just read every s-th pixel.
_VECTOR_BYTES = {"avx512": 64, "avx2": 32}


def _pixel_lanes_take(batch: int, dtype: torch.dtype) -> bool:
    """Whether the CPU engine runs a stride-1 convolution of this batch with pixels in the lanes."""
    from granet_kernels import build_info

    lanes = _VECTOR_BYTES.get(build_info().get("cpu_isa"), 16) // torch.empty((), dtype=dtype).element_size()
    return 2 * batch <= lanes


def _polyphase_index(crow: torch.Tensor, col: torch.Tensor, kernel_size, stride: int, in_channels: int):
    """The CSR column indices of the stride-1 kernel over the polyphase planes (ordered within each row)
    and the permutation of the values into that order."""
    kh, kw = kernel_size
    qh, qw = -(-kh // stride), -(-kw // stride)
    col = col.long()
    c, ky, kx = col // (kh * kw), (col // kw) % kh, col % kw
    phase_channel = (c * stride + ky % stride) * stride + kx % stride
    new_col = (phase_channel * qh + ky // stride) * qw + kx // stride
    rows = torch.repeat_interleave(torch.arange(crow.numel() - 1, device=col.device), crow.diff().long())
    perm = torch.argsort(rows * (in_channels * stride * stride * qh * qw) + new_col, stable=True)
    return new_col[perm].to(torch.int32), perm, (qh, qw)


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
        elif self._takes_polyphase(input):
            y = self._polyphase_forward(input)
        else:
            y = ops.sparse_conv2d(input, self.crow_indices, self.col_indices, self.weight, self.kernel_size, self.stride,
                                  self.padding, self.dilation, self.bias)
        return y.squeeze(0) if unbatched else y

    def _takes_polyphase(self, input: torch.Tensor) -> bool:
        s = self.stride[0]
        if (torch.compiler.is_compiling() or input.device.type != "cpu" or s == 1 or self.stride[1] != s
                or self.dilation != (1, 1) or input.dtype not in (torch.float32, torch.float64)
                # under vmap / functorch transforms (the planes' copy has no batching rule)
                or torch._C._functorch.peek_interpreter_stack() is not None):
            return False
        if self.kernel_size == (1, 1) and self.padding == (0, 0):
            return _pixel_lanes_take(input.shape[0], input.dtype)
        # Inference at the last batch size the lanes take (4 fp32 images on AVX2) measured faster with
        # images in the lanes (3x3 stride 2, d = 0.1: 1.70x / 2.00x dense against 1.41x / 1.79x), the
        # training step faster over the planes (1.80x / 1.96x against 1.66x / 1.85x).
        training = torch.is_grad_enabled() and (input.requires_grad or self.weight.requires_grad)
        return _pixel_lanes_take(input.shape[0] + (0 if training else 1), input.dtype)

    def _polyphase_forward(self, input: torch.Tensor) -> torch.Tensor:
        s = self.stride[0]
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        n, _, h, w = input.shape
        ho, wo = (h + 2 * ph - kh) // s + 1, (w + 2 * pw - kw) // s + 1
        if ho <= 0 or wo <= 0:  # let the op report the empty output
            return ops.sparse_conv2d(input, self.crow_indices, self.col_indices, self.weight, self.kernel_size,
                                     self.stride, self.padding, self.dilation, self.bias)
        if (kh, kw) == (1, 1) and (ph, pw) == (0, 0):
            return ops.sparse_conv2d(input[:, :, ::s, ::s], self.crow_indices, self.col_indices, self.weight, (1, 1),
                                     (1, 1), (0, 0), (1, 1), self.bias)
        col, perm, (qh, qw) = self._polyphase_index(s)
        # planes of out + q - 1 rows and columns: the stride-1 convolution over them has exactly the
        # output's size
        planes = ops.polyphase_planes(input, s, ph, pw, ho + qh - 1, wo + qw - 1)
        return ops.sparse_conv2d(planes, self.crow_indices, col, self.weight[perm], (qh, qw), (1, 1), (0, 0), (1, 1),
                                 self.bias)

    def _polyphase_index(self, s: int):
        """_polyphase_index of this module's filter index, cached until the index changes. The cache
        holds the index tensors it was built from (compared by identity, so a new index at a freed
        one's address is not mistaken for it) and their versions (in-place changes)."""
        crow, col = self.crow_indices, self.col_indices
        token = version_token(crow, col)
        cache = self.__dict__.get("_polyphase_cache")
        if (token is not None and cache is not None and cache[0] is crow and cache[1] is col
                and cache[2] == (token, s)):
            return cache[3]
        if token is None:  # inference tensors track no version: rebuilt on every call instead
            return _polyphase_index(crow, col, self.kernel_size, s, self.in_channels)
        # Built as normal tensors even inside inference_mode, so that a later call with autograd can use them.
        with torch.inference_mode(False):
            index = _polyphase_index(crow, col, self.kernel_size, s, self.in_channels)
        self.__dict__["_polyphase_cache"] = (crow, col, (token, s), index)
        return index

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        return s + ", " + self._sparse_repr()
