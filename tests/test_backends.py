"""granet_kernels.backend(): forcing, restoring and refusing backends."""

from __future__ import annotations

import threading

import pytest
import torch

import granet_kernels
from granet_kernels import BACKENDS, BackendUnavailableError, available_backends, backends, current_backend
from granet_kernels.ops import OPS
from granet_kernels.ops.samples import sample_inputs
from granet_testing import needs_cuda


def test_default_is_auto():
    assert current_backend() == "auto"


def test_context_manager_restores_previous():
    with granet_kernels.backend("reference"):
        assert current_backend() == "reference"
        with granet_kernels.backend("cpu"):
            assert current_backend() == "cpu"
        assert current_backend() == "reference"
    assert current_backend() == "auto"


def test_context_manager_restores_on_error():
    with pytest.raises(KeyError):
        with granet_kernels.backend("reference"):
            raise KeyError("boom")
    assert current_backend() == "auto"


def test_function_form_stays_in_force():
    previous = current_backend()
    try:
        granet_kernels.backend("reference")
        assert current_backend() == "reference"
        crow, col, values, x = sample_inputs("csr_spmm", seed=1)[4]
        assert granet_kernels.ops.select_backend(OPS["csr_spmm"], (crow, col, values, x)) == "reference"
        granet_kernels.backend("cpu")
        assert current_backend() == "cpu"
    finally:
        granet_kernels.backend(previous)
    assert current_backend() == previous


def test_forced_backend_is_seen_by_other_threads():
    """Process-wide on purpose: autograd runs backward on its own threads."""
    seen = []
    with granet_kernels.backend("reference"):
        thread = threading.Thread(target=lambda: seen.append(current_backend()))
        thread.start()
        thread.join()
    assert seen == ["reference"]


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'bogus'"):
        granet_kernels.backend("bogus")
    with pytest.raises(ValueError, match="unknown backend"):
        backends.unavailable_reason("CPU")
    assert current_backend() == "auto"


def test_available_backends():
    names = available_backends()
    assert "reference" in names and "cpu" in names
    assert "auto" not in names
    assert set(names) <= set(BACKENDS)
    for name in names:
        assert backends.unavailable_reason(name) is None
        with granet_kernels.backend(name):
            assert current_backend() == name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_forcing_cuda_without_gpu():
    assert "cuda" not in available_backends()
    with pytest.raises(BackendUnavailableError, match="'cuda' is not available") as info:
        granet_kernels.backend("cuda")
    # The message says what is missing: the GPU, or CUDA kernels in this build.
    assert "GPU" in str(info.value) or "without CUDA" in str(info.value)
    assert current_backend() == "auto"


def test_triton_without_gpu_needs_the_interpreter(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: Triton needs no interpreter")
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("triton is not installed")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in backends.unavailable_reason("triton")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        granet_kernels.backend("triton")
    assert not backends.device_accepts("triton", torch.device("cpu"))


def _op_without(backend_name):
    for name, opdef in OPS.items():
        if backend_name not in opdef.kernels:
            return name
    pytest.skip(f"every op has a {backend_name!r} kernel now")


def test_forcing_a_backend_the_op_lacks():
    name = "csr_sddmm" if "cpu" not in OPS["csr_sddmm"].kernels else _op_without("cpu")
    args = sample_inputs(name, seed=4)[1]
    with granet_kernels.backend("cpu"):
        with pytest.raises(BackendUnavailableError, match=f"granet::{name} has no 'cpu' kernel"):
            OPS[name].op(*args)
    # Under auto the same call runs.
    OPS[name].op(*args)


def test_forcing_a_backend_without_the_dtype():
    crow, col, values, x = sample_inputs("csr_spmm", dtype=torch.float16, seed=1)[1]
    assert torch.float16 not in OPS["csr_spmm"].kernels["cpu"].dtypes
    with granet_kernels.backend("cpu"):
        with pytest.raises(BackendUnavailableError, match=r"granet::csr_spmm.*'cpu' kernel does not take dtype torch.float16"):
            granet_kernels.ops.csr_spmm(crow, col, values, x)
    # auto falls back to the reference for a dtype the native kernel lacks.
    assert granet_kernels.ops.select_backend(OPS["csr_spmm"], (crow, col, values, x)) == "reference"


def test_auto_prefers_native_kernels_on_cpu():
    args = sample_inputs("csr_spmm", seed=1)[4]
    assert granet_kernels.ops.select_backend(OPS["csr_spmm"], args) == "cpu"
    with granet_kernels.backend("reference"):
        assert granet_kernels.ops.select_backend(OPS["csr_spmm"], args) == "reference"


@needs_cuda
def test_forcing_cpu_with_cuda_tensors():
    args = sample_inputs("csr_spmm", device="cuda", seed=1)[4]
    with granet_kernels.backend("cpu"):
        with pytest.raises(BackendUnavailableError, match="backend 'cpu' cannot run on cuda tensors"):
            granet_kernels.ops.csr_spmm(*args)


@needs_cuda
def test_forcing_cuda_with_cpu_tensors():
    if backends.unavailable_reason("cuda") is not None:
        pytest.skip(backends.unavailable_reason("cuda"))
    args = sample_inputs("csr_spmm", seed=1)[4]
    with granet_kernels.backend("cuda"):
        with pytest.raises(BackendUnavailableError, match="backend 'cuda' cannot run on cpu tensors"):
            granet_kernels.ops.csr_spmm(*args)


@needs_cuda
def test_auto_on_cuda_follows_the_op_preference():
    for name, opdef in OPS.items():
        args = sample_inputs(name, device="cuda", seed=1)[1]
        chosen = granet_kernels.ops.select_backend(opdef, args)
        runnable = [
            b for b in opdef.cuda_order
            if b in opdef.kernels and backends.unavailable_reason(b) is None and backends.device_accepts(b, torch.device("cuda"))
        ]
        assert chosen == (runnable[0] if runnable else "reference"), name
