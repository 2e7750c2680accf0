"""Shared pytest setup of the granet_kernels suite.

The Triton interpreter must be switched on before any Triton kernel is defined (that is, before
granet_kernels.triton.* is imported), so this is done first, at collection time: on a machine
without a GPU the "triton" backend then runs on CPU tensors and is tested there too.
"""

import os

import torch

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"

import sys

# The helpers live in tests/granet_testing.py (a uniquely named module, so that other conftest.py
# files of the suite cannot shadow them); make it importable under any --import-mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

import granet_kernels  # noqa: E402
from granet_kernels import backends  # noqa: E402
from granet_testing import (  # noqa: E402,F401
    DEVICES,
    assert_close_to_reference,
    backends_to_test,
    seed_for,
    skip_unless_backend_runs,
)


@pytest.fixture(autouse=True)
def _restore_backend():
    """Every test starts under "auto" and cannot leak a forced backend into the next one."""
    before = backends.current_backend()
    assert before == "auto", f"a previous test left backend {before!r} forced"
    yield
    leaked = backends.current_backend()
    if leaked != before:
        granet_kernels.backend(before)
        pytest.fail(f"the test left backend {leaked!r} forced")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def seed(request):
    """A seed of its own for every test id (stable across runs and processes)."""
    return seed_for(request.node.nodeid)
