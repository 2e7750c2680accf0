"""Whole-model conversion: sparsify_ (nn.Linear / nn.Conv2d -> sparse modules) and densify_."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from granet_kernels.formats import LAYOUTS
from granet_kernels.nn.conv import SparseConv2d
from granet_kernels.nn.density import layer_densities
from granet_kernels.nn.linear import SparseLinear, random_mask


def _reads_weights_directly(model: nn.Module) -> set[int]:
    """ids of the Linear layers whose weights their parent reads itself instead of calling them:
    nn.MultiheadAttention passes out_proj.weight straight to its functional form, so a sparse module
    there would be bypassed (or break the call)."""
    return {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}


def prunable_layers(model: nn.Module, filter_fn: Callable[[str, nn.Module], bool] | None = None,
                    dense_first_layer: bool = False) -> list[tuple[str, nn.Module]]:
    """The layers GraNet prunes, in model order: every nn.Conv2d with groups=1 (first conv and 1x1
    shortcuts included) and every nn.Linear (or their sparse versions); never biases or norms, nor
    nn.MultiheadAttention's out_proj (the attention reads its weight directly). A layer used at several
    places (tied) is listed once, under its first name."""
    skip = _reads_weights_directly(model)
    layers = [(name, m) for name, m in model.named_modules()
              if id(m) not in skip and (isinstance(m, (nn.Linear, SparseLinear, SparseConv2d))
                                        or (isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"))]
    if filter_fn is not None:
        layers = [(name, m) for name, m in layers if filter_fn(name, m)]
    if dense_first_layer and layers:
        layers = layers[1:]
    _refuse_shared_parameters(model, layers)
    return layers


def _refuse_shared_parameters(model: nn.Module, layers) -> None:
    """A layer whose weight or bias Parameter another module also holds (weight tying by Parameter, e.g.
    a decoder sharing an embedding's matrix) would be silently untied by the conversion: the sparse
    module gets Parameters of its own. Say so instead. (The same module used at several places is a
    tie the conversion keeps.)"""
    holders: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, m in model.named_modules():
        for p in m._parameters.values():
            if p is not None:
                holders.setdefault(id(p), []).append((name, m))
    for name, m in layers:
        for attr in ("weight", "bias"):
            p = m._parameters.get(attr)
            others = [other for other, om in holders.get(id(p), []) if om is not m] if p is not None else []
            if others:
                raise ValueError(f"layer {name!r} shares its {attr} Parameter with {others[0]!r}: converting it would "
                                 "untie them (the sparse layer gets its own Parameters). Tie the module itself (one "
                                 "module used at both places), or leave out every layer that holds it (filter_fn)")


def replace_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at the dotted path `name` inside `model`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def replace_everywhere(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` at every place `old` sits inside `model` (a tied layer stays tied)."""
    for name, m in list(model.named_modules(remove_duplicate=False)):
        if m is old and name:
            replace_submodule(model, name, new)


def sparsify_(model: nn.Module, density: float = 1.0, init: str = "erk",
              filter_fn: Callable[[str, nn.Module], bool] | None = None, layout: str = "auto",
              dense_first_layer: bool = False, seed: int = 0, blocksize: int = 32) -> nn.Module:
    """Replace the prunable layers of `model` in place by SparseLinear / SparseConv2d with random
    masks whose densities follow `init` ("erk", "er", "uniform") for a global `density`.

    Masks are drawn with exact counts (round(d_l * N_l) per layer) from a generator seeded with
    `seed`, so every process of a distributed run draws the same masks. Arguments are checked before
    any layer is replaced. Returns `model`.
    """
    if model is None or not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.Linear, nn.Conv2d, SparseLinear, SparseConv2d)):
        raise TypeError("sparsify_ converts the layers inside a model; wrap a single layer with "
                        "SparseLinear.from_dense / SparseConv2d.from_dense instead")
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {', '.join(LAYOUTS)}, got {layout!r}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive integer, got {blocksize!r}")
    layers = prunable_layers(model, filter_fn, dense_first_layer)
    if layout == "bsr":
        convs = [name for name, m in layers if isinstance(m, (nn.Conv2d, SparseConv2d))]
        if convs:
            raise ValueError(f"layout 'bsr' is available for linear layers only; {convs[0]!r} is a convolution "
                             "(leave it out with filter_fn, or use another layout)")
    shapes = [tuple(m.weight_shape) if isinstance(m, (SparseLinear, SparseConv2d)) else tuple(m.weight.shape)
              for _, m in layers]
    densities = layer_densities(shapes, density, init)
    gen = torch.Generator().manual_seed(seed)
    for (name, module), shape, d in zip(layers, shapes, densities):
        weight_device = module.weight.device
        mask = random_mask(shape, d, device=weight_device, generator=gen)
        if isinstance(module, (SparseLinear, SparseConv2d)):
            module.set_mask(mask, layout)
            module.layout_policy = layout
        elif isinstance(module, nn.Linear):
            replace_everywhere(model, module, SparseLinear.from_dense(module, mask=mask, layout=layout,
                                                                      blocksize=blocksize))
        else:
            replace_everywhere(model, module, SparseConv2d.from_dense(module, mask=mask, layout=layout))
    return model


def densify_(model: nn.Module) -> nn.Module:
    """Replace every SparseLinear / SparseConv2d of `model` in place by its dense module (masked
    weights; a tied layer becomes one tied dense layer). Returns `model`."""
    if isinstance(model, (SparseLinear, SparseConv2d)):
        raise TypeError("densify_ converts the layers inside a model; for a single layer use its to_dense()")
    for _, module in list(model.named_modules()):
        if isinstance(module, (SparseLinear, SparseConv2d)):
            replace_everywhere(model, module, module.to_dense())
    return model


def sparse_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (SparseLinear, SparseConv2d))]
