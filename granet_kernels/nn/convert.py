"""Whole-model conversion: sparsify_ (nn.Linear / nn.Conv2d -> sparse modules) and densify_."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from granet_kernels.nn.conv import SparseConv2d
from granet_kernels.nn.density import layer_densities
from granet_kernels.nn.linear import SparseLinear, random_mask


def prunable_layers(model: nn.Module, filter_fn: Callable[[str, nn.Module], bool] | None = None,
                    dense_first_layer: bool = False) -> list[tuple[str, nn.Module]]:
    """The layers GraNet prunes, in model order: every nn.Conv2d with groups=1 (first conv and 1x1
    shortcuts included) and every nn.Linear (or their sparse versions); never biases or norms."""
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, (nn.Linear, SparseLinear, SparseConv2d))
              or (isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros")]
    if filter_fn is not None:
        layers = [(name, m) for name, m in layers if filter_fn(name, m)]
    if dense_first_layer and layers:
        layers = layers[1:]
    return layers


def replace_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at the dotted path `name` inside `model`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def sparsify_(model: nn.Module, density: float = 1.0, init: str = "erk",
              filter_fn: Callable[[str, nn.Module], bool] | None = None, layout: str = "auto",
              dense_first_layer: bool = False, seed: int = 0, blocksize: int = 32) -> nn.Module:
    """Replace the prunable layers of `model` in place by SparseLinear / SparseConv2d with random
    masks whose densities follow `init` ("erk", "er", "uniform") for a global `density`.

    Masks are drawn with exact counts (round(d_l * N_l) per layer) from a generator seeded with
    `seed`, so every process of a distributed run draws the same masks. Returns `model`.
    """
    if model is None or not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.Linear, nn.Conv2d)):
        raise TypeError("sparsify_ converts the layers inside a model; wrap a single layer with "
                        "SparseLinear.from_dense / SparseConv2d.from_dense instead")
    layers = prunable_layers(model, filter_fn, dense_first_layer)
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
            replace_submodule(model, name, SparseLinear.from_dense(module, mask=mask, layout=layout, blocksize=blocksize))
        else:
            replace_submodule(model, name, SparseConv2d.from_dense(module, mask=mask, layout=layout))
    return model


def densify_(model: nn.Module) -> nn.Module:
    """Replace every SparseLinear / SparseConv2d of `model` in place by its dense module (masked
    weights). Returns `model`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, (SparseLinear, SparseConv2d)) and name:
            replace_submodule(model, name, module.to_dense())
    return model


def sparse_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (SparseLinear, SparseConv2d))]
