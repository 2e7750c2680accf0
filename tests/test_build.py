"""What the build registered: every public op with CPU (and, in CUDA builds, CUDA) kernels and a
fake impl; the native kernels; the CUDA kernels a CUDA CI build must contain."""

from __future__ import annotations

import os

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import granet_kernels
from granet_kernels.ops import OPS
from granet_kernels.ops.samples import sample_inputs
from granet_testing import map_tensors

CUDA_BUILD = torch.version.cuda is not None and bool(granet_kernels.build_info()["cuda"])
# Every native kernel op of the build, and the ones a build must always have.
NATIVE_OPS = sorted(
    name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("granet::_native_")
)
# Internal ops of the masked layout's backward (Python implementations; tested in tests/ops/test_flops.py).
BACKWARD_HELPER_OPS = ["_masked_weight_grad", "_masked_conv2d_backward"]
REQUIRED_NATIVE_OPS = ["_native_csr_spmm"]
REQUIRED_CUDA_NATIVE_OPS = ["_native_csr_spmm"]


def _has_kernel(qualname, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)


def test_build_info():
    info = granet_kernels.build_info()
    assert isinstance(info["cuda"], bool)
    assert info["cpu_isa"] in ("avx512", "avx2", "generic")
    assert info["compiler"]


@pytest.mark.parametrize("name", list(OPS))
def test_public_op_registered_with_cpu_kernel(name):
    opdef = OPS[name]
    assert hasattr(torch.ops.granet, name)
    assert opdef.op is getattr(torch.ops.granet, name)
    assert _has_kernel(opdef.qualname, "CPU"), f"{opdef.qualname} has no CPU kernel"
    assert _has_kernel(opdef.qualname, "Meta"), f"{opdef.qualname} has no fake (Meta) impl"
    assert callable(getattr(granet_kernels.ops, name)), f"granet_kernels.ops.{name} is missing"


def test_required_native_ops_exist():
    assert set(REQUIRED_NATIVE_OPS) <= set(NATIVE_OPS), NATIVE_OPS


def test_every_op_of_the_namespace_is_public_or_native():
    """No op is registered without an entry in OPS (and so without tests)."""
    names = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("granet::")}
    assert names == set(OPS) | set(NATIVE_OPS) | set(BACKWARD_HELPER_OPS)


@pytest.mark.parametrize("name", NATIVE_OPS)
def test_native_op_has_cpu_kernel(name):
    assert _has_kernel(f"granet::{name}", "CPU")


@pytest.mark.parametrize("name", list(OPS))
def test_fake_impl_matches_reference(name):
    """Under FakeTensorMode the op runs its fake impl: the reference's shapes and dtypes."""
    for i, args in enumerate(sample_inputs(name, seed=11)[:3]):
        expected = OPS[name].reference(*args)
        with FakeTensorMode() as mode:
            fake_args = map_tensors(args, mode.from_tensor)
            out = OPS[name].op(*fake_args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        refs = expected if isinstance(expected, (tuple, list)) else (expected,)
        assert len(outs) == len(refs), f"{name} sample {i}"
        for o, r in zip(outs, refs):
            assert o.shape == r.shape, f"{name} sample {i}: fake shape {tuple(o.shape)}, reference {tuple(r.shape)}"
            assert o.dtype == r.dtype, f"{name} sample {i}: fake dtype {o.dtype}, reference {r.dtype}"
            assert o.device == r.device, f"{name} sample {i}"


@pytest.mark.skipif(not CUDA_BUILD, reason="not a CUDA build (torch without CUDA, or _C built without CUDA kernels)")
@pytest.mark.parametrize("name", REQUIRED_CUDA_NATIVE_OPS + list(OPS))
def test_cuda_kernels_registered(name):
    assert _has_kernel(f"granet::{name}", "CUDA"), f"granet::{name} has no CUDA kernel in this CUDA build"


def test_cuda_build_required():
    """CI sets GRANET_REQUIRE_CUDA=1 on CUDA builds: a silently CPU-only _C must fail there."""
    if torch.version.cuda is None:
        pytest.skip("torch is a CPU-only build")
    if os.environ.get("GRANET_REQUIRE_CUDA") != "1":
        pytest.skip("GRANET_REQUIRE_CUDA=1 is not set (CI sets it where the CUDA kernels must be built)")
    assert granet_kernels.build_info()["cuda"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_backend_available_on_gpu_when_built():
    if not granet_kernels.build_info()["cuda"]:
        pytest.skip("_C was built without CUDA kernels")
    assert "cuda" in granet_kernels.available_backends()
