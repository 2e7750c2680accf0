"""Drop-in sparse modules and whole-model conversion."""

from granet_kernels.nn.conv import SparseConv2d
from granet_kernels.nn.convert import densify_, prunable_layers, sparse_modules, sparsify_
from granet_kernels.nn.density import layer_densities
from granet_kernels.nn.linear import SparseLinear, random_mask

__all__ = ["SparseLinear", "SparseConv2d", "sparsify_", "densify_", "prunable_layers", "sparse_modules",
           "layer_densities", "random_mask"]
