"""SparseLinear: a drop-in nn.Linear whose weight is sparse (masked-dense, CSR or BSR)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from granet_kernels import ops
from granet_kernels.formats import padded
from granet_kernels.nn._sparse import SparseWeightMixin, carry_module_state


class SparseLinear(SparseWeightMixin, nn.Module):
    """y = x @ (W * mask)^T + b with W stored sparse. `layout`: "auto" (by density, from the measured
    crossover), "masked", "csr" or "bsr" (blocks of `blocksize`)."""

    kind = "linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, mask: torch.Tensor | None = None,
                 density: float | None = None, layout: str = "auto", blocksize: int = 32, device=None, dtype=None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if in_features < 0 or out_features < 0:
            raise ValueError(f"in_features and out_features must be >= 0, got {in_features}, {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        dense = nn.Linear(in_features, out_features, bias, device=device, dtype=dtype)
        self.bias = dense.bias
        mask = _initial_mask(self.weight_shape, mask, density, dense.weight.device, generator)
        self._init_sparse(dense.weight, mask, layout, blocksize)

    @property
    def weight_shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    @classmethod
    def from_dense(cls, module: nn.Linear, mask: torch.Tensor | None = None, density: float | None = None,
                   layout: str = "auto", blocksize: int = 32, generator: torch.Generator | None = None) -> "SparseLinear":
        """A SparseLinear with `module`'s weights at `mask` (or a random mask of `density`; default all)."""
        if not isinstance(module, nn.Linear):
            raise TypeError(f"module must be an nn.Linear, got {type(module).__name__}")
        out = cls.__new__(cls)
        nn.Module.__init__(out)
        out.in_features, out.out_features = module.in_features, module.out_features
        out.bias = None if module.bias is None else nn.Parameter(module.bias.detach().clone())
        mask = _initial_mask(out.weight_shape, mask, density, module.weight.device, generator)
        out._init_sparse(module.weight.detach().clone(), mask, layout, blocksize)
        carry_module_state(module, out)
        return out

    def to_dense(self) -> nn.Linear:
        """A plain nn.Linear holding the masked weights."""
        w = self.weight
        dense = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return carry_module_state(self, dense)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"SparseLinear: input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() < 1 or input.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear: input must have {self.in_features} features in its last dimension, "
                             f"got shape {tuple(input.shape)}")
        if input.dtype != self.weight.dtype:
            raise TypeError(f"SparseLinear: input dtype {input.dtype} does not match the weight's {self.weight.dtype}")
        if input.device != self.weight.device:
            raise ValueError(f"SparseLinear: input is on {input.device} but the weight is on {self.weight.device}")
        flat = input.dim() == 2
        x = input if flat else input.reshape(-1, self.in_features)
        if self.layout == "masked":
            y = ops.masked_matmul(x, self.weight, self.weight_mask, self.bias)
        elif self.layout == "csr":
            y = ops.csr_linear(x, self.crow_indices, self.col_indices, self.ccol_indices, self.row_indices, self.perm,
                               self.weight, self.bias)
        else:
            y = self._bsr_forward(x)
        return y if flat else y.reshape(*input.shape[:-1], self.out_features)

    def _bsr_forward(self, x: torch.Tensor) -> torch.Tensor:
        bs = self.blocksize
        k_pad = padded(self.in_features, bs) - self.in_features
        if k_pad:
            x = F.pad(x, (0, k_pad))
        # The in-block mask keeps unstructured semantics exact, gradients included.
        blocks = self.weight * self.block_mask
        y = ops.bsr_spmm(self.crow_indices, self.col_indices, blocks, x)[:, : self.out_features]
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{self._sparse_repr()}")


def _initial_mask(shape, mask, density, device, generator) -> torch.Tensor | None:
    if mask is not None and density is not None:
        raise ValueError("give either mask or density, not both")
    if density is None:
        return mask
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 <= float(density) <= 1.0:
        raise ValueError(f"density must be a number in [0, 1], got {density!r}")
    return random_mask(shape, density, device=device, generator=generator)


def random_mask(shape, density: float, *, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """A mask with exactly round(density * numel) kept positions, drawn uniformly (seeded by
    `generator`; default seed 0, so every process draws the same mask)."""
    if not 0.0 <= float(density) <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    total = math.prod(shape)
    keep = int(round(float(density) * total))
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    chosen = torch.randperm(total, generator=gen)[:keep]
    mask = torch.zeros(total, dtype=torch.bool)
    mask[chosen] = True
    return mask.reshape(shape).to(device)
