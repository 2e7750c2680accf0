"""torch.library.opcheck on every op and sample: schema, autograd registration, fake (meta) impl
against the real kernel, and AOT dispatch with dynamic shapes."""

from __future__ import annotations

import pytest
import torch

from granet_kernels.ops import OPS
from granet_kernels.ops.samples import sample_inputs
from granet_testing import DEVICES, requires_grad_floats

DIFFERENTIABLE = ("csr_spmm", "csr_linear", "bsr_spmm", "masked_matmul", "masked_conv2d", "sparse_conv2d")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
def test_opcheck(name, device, seed):
    opdef = OPS[name]
    for i, args in enumerate(sample_inputs(name, device=device, dtype=torch.float64, seed=seed)):
        try:
            torch.library.opcheck(opdef.op, args)
        except Exception as error:
            raise AssertionError(f"opcheck of {name} on sample {i} (seed {seed}) failed: {error}") from error


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_opcheck_requires_grad(name, device, seed):
    """Floating inputs (values, x, weight, input, bias) require grad: the autograd formula is
    traced and checked too."""
    opdef = OPS[name]
    for i, args in enumerate(sample_inputs(name, device=device, dtype=torch.float64, seed=seed)):
        try:
            torch.library.opcheck(opdef.op, requires_grad_floats(args))
        except Exception as error:
            raise AssertionError(f"opcheck of {name} (requires_grad) on sample {i} (seed {seed}) failed: {error}") from error
