"""Which implementation runs an op: reference (pure torch), cpu (C++/OpenMP), triton, cuda (CUDA C++).

``backend(name)`` forces one for every op; as a function call it stays in force, as a context
manager it restores the previous choice on exit::

    with granet_kernels.backend("reference"):
        y = granet_kernels.ops.csr_spmm(crow, col, values, x)

The choice is process-wide rather than thread-local on purpose: autograd runs CUDA backward passes
on its own threads, which must see the same choice as the forward.
"""

from __future__ import annotations

import os

import torch

from granet_kernels import _native

BACKENDS = ("reference", "cpu", "triton", "cuda", "auto")

_current = "auto"


class BackendUnavailableError(RuntimeError):
    """A backend was forced that this build, machine or op cannot provide."""


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(name: str) -> str | None:
    """None when backend `name` can run on this machine, else what is missing."""
    if name not in BACKENDS:
        raise ValueError(f"backend: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name in ("reference", "auto", "cpu"):
        return None  # _C (the CPU kernels) is always built; importing this package requires it
    if name == "cuda":
        if not _native.built_with_cuda():
            return (
                "granet_kernels._C was built without CUDA kernels (GRANET_SKIP_CUDA=1, a CPU-only torch, "
                "or no CUDA toolkit at build time; rebuild with GRANET_REQUIRE_CUDA=1 to see why)"
            )
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
        return None
    # triton
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return f"triton is not installed ({error})"
    if torch.cuda.is_available() or triton_interpreter_enabled():
        return None
    return "no CUDA GPU is visible and TRITON_INTERPRET=1 is not set (the interpreter runs Triton on CPU tensors)"


def available_backends() -> list[str]:
    return [name for name in BACKENDS if name != "auto" and unavailable_reason(name) is None]


def current_backend() -> str:
    return _current


class backend:
    """Force the implementation of every granet op: "reference", "cpu", "triton", "cuda" or "auto"."""

    def __init__(self, name: str):
        global _current
        reason = unavailable_reason(name)
        if reason is not None:
            raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
        self.name = name
        self._previous = _current
        _current = name

    def __enter__(self) -> "backend":
        return self

    def __exit__(self, *exc) -> None:
        global _current
        _current = self._previous

    def __repr__(self) -> str:
        return f"granet_kernels.backend({self.name!r})"


def device_accepts(backend_name: str, device: torch.device) -> bool:
    """Whether a backend's kernels can take tensors on `device`."""
    if backend_name == "reference":
        return True
    if backend_name == "cpu":
        return device.type == "cpu"
    if backend_name == "cuda":
        return device.type == "cuda"
    if backend_name == "triton":
        return device.type == "cuda" or (device.type == "cpu" and triton_interpreter_enabled())
    return False
