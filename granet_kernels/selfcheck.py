"""Correctness self-check: every op, on every backend this machine offers, against its reference.

    python -m granet_kernels.selfcheck
    TRITON_INTERPRET=1 python -m granet_kernels.selfcheck   # also the Triton kernels, on the CPU
"""

from __future__ import annotations

import sys
import time

import torch

from granet_kernels import _native, backends
from granet_kernels.ops import OPS
from granet_kernels.ops.samples import sample_inputs


def _to_float64(args):
    def conv(a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.double()
        if isinstance(a, list):
            return [conv(b) for b in a]
        return a

    return tuple(conv(a) for a in args)


def _matches(out: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> bool:
    if out.shape != expected.shape:
        return False
    if not out.is_floating_point():
        return torch.equal(out.cpu(), expected.cpu())
    tol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 2e-2)
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    return torch.allclose(out.double().cpu(), expected.double().cpu(), rtol=tol, atol=tol * scale)


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def check_op(name: str, backend_name: str, device: str, dtype: torch.dtype) -> tuple[int, int]:
    """(passed, total) samples of op `name` on one backend/device/dtype."""
    opdef = OPS[name]
    passed = total = 0
    for seed, args in enumerate(sample_inputs(name, device=device, dtype=dtype, seed=17)):
        with backends.backend(backend_name):
            outs = _as_tuple(opdef.op(*args))
        exact = not outs[0].is_floating_point() or name == "topk_threshold"
        expected = _as_tuple(opdef.reference(*args) if exact else opdef.reference(*_to_float64(args)))
        total += 1
        if exact:
            passed += all(torch.equal(o.cpu(), e.cpu()) for o, e in zip(outs, expected))
        else:
            passed += all(_matches(o, e, dtype) for o, e in zip(outs, expected))
    return passed, total


def run(stream=sys.stdout) -> bool:
    def say(line=""):
        print(line, file=stream, flush=True)

    info = _native.BUILD_INFO
    say(f"granet_kernels self-check  (torch {torch.__version__}, CUDA kernels built: {info.get('cuda')}, "
        f"CPU ISA: {info.get('cpu_isa')})")
    say("backends:")
    for name in backends.BACKENDS[:-1]:
        reason = backends.unavailable_reason(name)
        say(f"  {name:10s} {'available' if reason is None else 'unavailable: ' + reason}")
    say()
    say(f"{'op':18s} {'backend':10s} {'device':7s} {'dtype':8s} result")
    ok = True
    start = time.perf_counter()
    for name, opdef in OPS.items():
        for device in devices():
            for backend_name in opdef.kernels:
                if backends.unavailable_reason(backend_name) or not backends.device_accepts(backend_name, torch.device(device)):
                    continue
                if backend_name == "triton" and device == "cpu" and name != "masked_matmul":
                    continue
                for dtype in (torch.float32, torch.float64):
                    dtypes = opdef.kernels[backend_name].dtypes
                    if dtypes is not None and dtype not in dtypes:
                        continue
                    passed, total = check_op(name, backend_name, device, dtype)
                    ok &= passed == total
                    mark = "ok" if passed == total else "MISMATCH"
                    say(f"{name:18s} {backend_name:10s} {device:7s} {str(dtype)[6:]:8s} {passed}/{total} {mark}")
    say()
    say(f"self-check {'passed' if ok else 'FAILED'} in {time.perf_counter() - start:.1f} s")
    return ok


def main() -> int:
    # Triton on the CPU needs TRITON_INTERPRET=1 in the environment before triton is first
    # imported (torch imports it), so it cannot be switched on from here.
    return 0 if run() else 1


if __name__ == "__main__":
    sys.exit(main())
