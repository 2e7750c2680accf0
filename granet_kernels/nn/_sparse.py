"""What SparseLinear and SparseConv2d share: one sparse weight in one layout, its mask, repacking,
and a state_dict in the dense shape (weight + mask), loadable into nn.Linear / nn.Conv2d.

The trainable tensor is always the Parameter `weight`; its shape depends on the layout (dense in
"masked", [nnz] in "csr", [nnzb, bs, bs] in "bsr"). A repack (new mask or layout) replaces its
data but keeps the Parameter object, so optimizers keep their reference; their per-parameter
state (momentum) must then be remapped, which the pruning engine does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from granet_kernels.formats import LAYOUTS, BSRIndex, CSRIndex, check_mask
from granet_kernels.nn import crossover

_LAYOUT_BUFFERS = {
    "masked": ("weight_mask",),
    "csr": ("crow_indices", "col_indices", "ccol_indices", "row_indices", "perm"),
    "bsr": ("crow_indices", "col_indices", "ccol_indices", "row_indices", "perm", "block_mask"),
}


class SparseWeightMixin:
    """Mixed into an nn.Module subclass that defines `weight_shape` (dense) and `kind`."""

    weight_shape: tuple[int, ...]
    kind: str  # "linear" or "conv", for the crossover table

    # --- setup -------------------------------------------------------------------------------------

    def _init_sparse(self, dense_weight: torch.Tensor, mask: torch.Tensor | None, layout: str, blocksize: int):
        self._check_layout(layout)
        if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
            raise ValueError(f"blocksize must be a positive integer, got {blocksize!r}")
        self.layout_policy = layout
        self.blocksize = int(blocksize)
        self.layout = None
        mask = torch.ones(self.weight_shape, dtype=torch.bool, device=dense_weight.device) if mask is None else mask
        mask = check_mask(mask, self.weight_shape).to(dense_weight.device)
        self._pack(dense_weight.detach(), mask, self._choose_layout(layout, mask, dense_weight))

    def _check_layout(self, layout) -> None:
        if layout != "auto" and layout not in LAYOUTS:
            raise ValueError(f"layout must be 'auto' or one of {', '.join(LAYOUTS)}, got {layout!r}")
        if layout == "bsr" and self.kind != "linear":
            raise ValueError(f"layout 'bsr' is available for SparseLinear only, not {type(self).__name__}")

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return self.weight_shape[0], math.prod(self.weight_shape[1:])

    def _choose_layout(self, policy: str, mask: torch.Tensor, like: torch.Tensor) -> str:
        if mask.device.type == "meta":
            # No values on meta (deferred initialisation): only the dense-shaped layout can be built. An
            # "auto" module repacks by density when it gets real weights (load_state_dict, set_mask).
            if policy in ("auto", "masked"):
                return "masked"
            raise ValueError(f"{type(self).__name__}: layout {policy!r} stores only the kept weights, which a mask "
                             "on the meta device does not say; use layout='masked' or 'auto' there (an 'auto' "
                             "module repacks when load_state_dict or set_mask gives it real weights)")
        if policy != "auto":
            return policy
        density = float(mask.sum()) / mask.numel() if mask.numel() else 1.0
        return crossover.choose_layout(self.kind, density, like.device, like.dtype, mask.numel())

    def _pack(self, dense: torch.Tensor, mask: torch.Tensor, layout: str) -> None:
        """Store `dense` (dense-shaped, any values) at `mask` in `layout`. A gradient already on the
        weight follows it like the values do: kept where the mask keeps, 0 at new positions."""
        old = self._parameters.get("weight")
        grad = self.from_layout(old.grad) if isinstance(old, nn.Parameter) and old.grad is not None else None
        matrix = dense.reshape(self.matrix_shape)
        flat_mask = mask.reshape(self.matrix_shape)
        if layout == "masked":
            data = torch.where(mask, dense, torch.zeros((), dtype=dense.dtype, device=dense.device))
            buffers = {"weight_mask": mask.clone()}
        elif layout == "csr":
            index = CSRIndex.from_mask(flat_mask)
            data = index.gather(matrix)
            buffers = index.tensors()
        else:
            index = BSRIndex.from_mask(flat_mask, self.blocksize)
            data = index.gather(matrix)
            buffers = index.tensors()
        for name in set(b for names in _LAYOUT_BUFFERS.values() for b in names) - set(buffers):
            self._buffers.pop(name, None)
        for name, tensor in buffers.items():
            self.register_buffer(name, tensor, persistent=False)
        data = data.contiguous()
        if isinstance(self._parameters.get("weight"), nn.Parameter):
            if self.weight.shape != data.shape:
                _forget_grad_accumulator(self.weight)
            self.weight.data = data
        else:
            self.weight = nn.Parameter(data)
        self.layout = layout
        if grad is not None:
            self.weight.grad = self.to_layout(grad.to(dtype=data.dtype, device=data.device))

    # --- the sparse weight -------------------------------------------------------------------------

    @property
    def mask(self) -> torch.Tensor:
        """Bool tensor of the dense weight's shape: True where the weight is kept."""
        if self.layout == "masked":
            return self.weight_mask
        return self._index().mask(self.matrix_shape).reshape(self.weight_shape)

    @property
    def nnz(self) -> int:
        if self.layout == "masked":
            return int(self.weight_mask.sum())
        if self.layout == "csr":
            return self.col_indices.numel()
        return int(self.block_mask.sum())

    @property
    def density(self) -> float:
        total = math.prod(self.weight_shape)
        return self.nnz / total if total else 1.0

    def _index(self):
        csr = CSRIndex(self.crow_indices, self.col_indices, self.ccol_indices, self.row_indices, self.perm)
        return csr if self.layout == "csr" else BSRIndex(csr, self.blocksize, self.block_mask)

    def dense_weight(self) -> torch.Tensor:
        """The weight in its dense shape, zeros where masked (differentiable)."""
        if self.layout == "masked":
            return torch.where(self.weight_mask, self.weight, torch.zeros((), dtype=self.weight.dtype, device=self.weight.device))
        return self._index().scatter(self.weight, self.matrix_shape).reshape(self.weight_shape)

    # --- tensors shaped like the stored weight (gradients, optimizer state) --------------------------

    def to_layout(self, dense: torch.Tensor) -> torch.Tensor:
        """A dense-shaped tensor (weight, gradient, optimizer state) in the stored weight's layout and
        shape, zero outside the mask."""
        if tuple(dense.shape) != tuple(self.weight_shape):
            raise ValueError(f"dense must have the weight's shape {tuple(self.weight_shape)}, got {tuple(dense.shape)}")
        if self.layout == "masked":
            return torch.where(self.weight_mask, dense, torch.zeros((), dtype=dense.dtype, device=dense.device))
        return self._index().gather(dense.reshape(self.matrix_shape)).contiguous()

    def from_layout(self, stored: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_layout`: a tensor shaped like the stored weight, in the dense shape."""
        if tuple(stored.shape) != tuple(self.weight.shape):
            raise ValueError(f"stored must have the stored weight's shape {tuple(self.weight.shape)}, "
                             f"got {tuple(stored.shape)}")
        if self.layout == "masked":
            return torch.where(self.weight_mask, stored, torch.zeros((), dtype=stored.dtype, device=stored.device))
        return self._index().scatter(stored, self.matrix_shape).reshape(self.weight_shape)

    def layout_mask(self) -> torch.Tensor | None:
        """Bool tensor shaped like the stored weight, True at kept weights; None when every stored
        entry is kept (CSR stores only the kept weights)."""
        if self.layout == "masked":
            return self.weight_mask
        if self.layout == "bsr":
            return self.block_mask
        return None

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor, layout: str | None = None) -> None:
        """Replace the mask: kept weights keep their values, newly active ones start at 0.
        The layout is re-chosen when the module's layout policy is "auto" (or given here)."""
        mask = check_mask(mask, self.weight_shape).to(self.weight.device)
        policy = self.layout_policy if layout is None else layout
        self._check_layout(policy)
        dense = self.dense_weight()
        self._pack(dense, mask, self._choose_layout(policy, mask, dense))

    @torch.no_grad()
    def set_layout(self, layout: str) -> None:
        """Repack the same weights in another layout ("masked", "csr", "bsr" or "auto")."""
        self.set_mask(self.mask, layout)
        self.layout_policy = layout

    # --- state_dict: dense weight + mask ----------------------------------------------------------

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        weight = self.dense_weight()
        destination[prefix + "weight"] = weight if keep_vars else weight.detach()
        destination[prefix + "mask"] = self.mask.clone()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        own = {"weight", "mask"} | ({"bias"} if self.bias is not None else set())
        for key in state_dict:
            if key.startswith(prefix) and "." not in key[len(prefix):] and key[len(prefix):] not in own:
                unexpected_keys.append(key)
        if prefix + "weight" not in state_dict:
            missing_keys.append(prefix + "weight")
            return
        weight = state_dict[prefix + "weight"]
        if tuple(weight.shape) != tuple(self.weight_shape):
            error_msgs.append(f"size mismatch for {prefix}weight: copying a param with shape {tuple(weight.shape)}, "
                              f"the shape in current model is {tuple(self.weight_shape)}")
            return
        # A dense checkpoint (plain nn.Linear / nn.Conv2d) has no mask: keep its nonzeros.
        mask = state_dict.get(prefix + "mask")
        try:
            mask = check_mask(weight != 0 if mask is None else mask, self.weight_shape, name=prefix + "mask")
        except (TypeError, ValueError) as error:
            error_msgs.append(str(error))
            return
        if self.bias is not None:
            if prefix + "bias" in state_dict:
                bias = state_dict[prefix + "bias"]
                if bias.shape != self.bias.shape:
                    error_msgs.append(f"size mismatch for {prefix}bias: copying a param with shape {tuple(bias.shape)}, "
                                      f"the shape in current model is {tuple(self.bias.shape)}")
                    return
                with torch.no_grad():
                    self.bias.copy_(bias)
            else:
                missing_keys.append(prefix + "bias")
        # The layout follows the policy (as it did when the checkpoint was written), so that optimizer
        # state saved beside this module keeps matching the stored weight's shape.
        weight = weight.to(device=self.weight.device, dtype=self.weight.dtype)
        mask = mask.to(self.weight.device)
        with torch.no_grad():
            self._pack(weight, mask, self._choose_layout(self.layout_policy, mask, weight))

    def _sparse_repr(self) -> str:
        if self.weight.device.type == "meta":  # no mask values to count
            return f"layout={self.layout}, density=unknown (meta)"
        return f"layout={self.layout}, density={self.density:.4f}"


def carry_module_state(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Give a converted module (sparse <-> dense) its source's training mode and the requires_grad
    flags of its weight and bias (frozen layers stay frozen). Returns dst."""
    dst.train(src.training)
    dst.weight.requires_grad_(src.weight.requires_grad)
    if getattr(src, "bias", None) is not None and getattr(dst, "bias", None) is not None:
        dst.bias.requires_grad_(src.bias.requires_grad)
    return dst


def _forget_grad_accumulator(param: nn.Parameter) -> None:
    """Make the next forward build a fresh gradient accumulator for `param`.

    Autograd caches a leaf's accumulator (with the shape it had) while any graph still holds it, e.g.
    a `loss` kept alive across iterations; assigning `.data` of another shape keeps that stale shape
    and the next backward fails. Assigning data of another dtype drops the cached accumulator."""
    other = torch.float64 if param.dtype != torch.float64 else torch.float32
    param.data = torch.empty(0, dtype=other, device=param.device)
