"""Every op x every backend that runs here x device x dtype, on every sample input, against the
op's pure-torch reference evaluated in float64 on the same inputs."""

from __future__ import annotations

import pytest
import torch

import granet_kernels
from granet_kernels.backends import BackendUnavailableError, device_accepts
from granet_kernels.ops import OPS, select_backend
from granet_kernels.ops.samples import sample_inputs
from granet_testing import (
    DEVICES,
    FLOAT_DTYPES,
    assert_close_to_reference,
    assert_unchanged,
    backends_to_test,
    clone_args,
    dtype_name,
    skip_unless_backend_runs,
    to_float64,
)

# The Triton interpreter (CPU) is slow: there, only these ops' Triton kernels run in this file
# (the kernels' own tests live in tests/triton); on a GPU every Triton kernel does.
TRITON_ON_INTERPRETER = ("masked_matmul",)


def _cases(with_backend: bool):
    cases = []
    for name, opdef in OPS.items():
        for device in DEVICES:
            names = backends_to_test(opdef, device) if with_backend else ["auto"]
            if device == "cpu" and name not in TRITON_ON_INTERPRETER:
                names = [b for b in names if b != "triton"]
            for backend in names:
                for dtype in FLOAT_DTYPES[device]:
                    cases.append(pytest.param(name, backend, device, dtype, id=f"{name}-{backend}-{device}-{dtype_name(dtype)}"))
    return cases


def _check_topk(out, args, ref, msg):
    tensors, k = args
    assert out.dim() == 0 and out.dtype == tensors[0].dtype and out.device == tensors[0].device, msg
    assert torch.equal(out, ref), f"{msg}: threshold {out.item()} != reference {ref.item()}"
    # Independent of the reference: exactly k-or-more magnitudes reach it, fewer than k pass it.
    flat = torch.cat([t.reshape(-1).abs() for t in tensors])
    assert int((flat >= out).sum()) >= k > int((flat > out).sum()), msg


def _check_regrow(out, args, ref, msg):
    mask, score, k = args
    assert out.dtype == torch.int64 and out.device == mask.device, msg
    assert torch.equal(out, ref), f"{msg}: {out.tolist()} != reference {ref.tolist()}"
    # Independent of the reference: k ascending distinct inactive positions, none beaten by a
    # position left out (by |score|, then by the lower index).
    assert out.numel() == k, msg
    assert bool((out[1:] > out[:-1]).all()), f"{msg}: indices not strictly ascending"
    flat_mask, flat_score = mask.reshape(-1), score.reshape(-1).abs()
    assert not bool(flat_mask[out].any()), f"{msg}: regrew an active position"
    if k:
        chosen = torch.zeros_like(flat_mask)
        chosen[out] = True
        rest = torch.nonzero(~flat_mask & ~chosen).reshape(-1)
        if rest.numel():
            weakest = flat_score[out].min()
            assert bool((flat_score[rest] <= weakest).all()), f"{msg}: a left-out position scores higher"
            tied = rest[flat_score[rest] == weakest]
            winners = out[flat_score[out] == weakest]
            if tied.numel():
                assert int(tied.min()) > int(winners.max()), f"{msg}: a tie went to a higher index"


def check_against_reference(name, out, args, dtype, msg):
    opdef = OPS[name]
    if name == "topk_threshold":
        _check_topk(out, args, opdef.reference(*args), msg)
    elif name == "regrow":
        _check_regrow(out, args, opdef.reference(*args), msg)
    else:
        ref = opdef.reference(*to_float64(args))
        outs, refs = _as_tuple(out), _as_tuple(ref)
        assert len(outs) == len(refs), f"{msg}: {len(outs)} outputs, the reference has {len(refs)}"
        for j, (o, r) in enumerate(zip(outs, refs)):
            assert o.device == tensors_device(args), f"{msg}: output {j} on {o.device}"
            assert_close_to_reference(o, r, dtype, f"{msg}, output {j}")


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def tensors_device(args):
    return next(a for a in args if isinstance(a, torch.Tensor)).device


@pytest.mark.parametrize("name,backend,device,dtype", _cases(with_backend=True))
def test_op_matches_reference(name, backend, device, dtype, seed):
    opdef = OPS[name]
    skip_unless_backend_runs(backend)
    samples = sample_inputs(name, device=device, dtype=dtype, seed=seed)
    kernel = opdef.kernels[backend]
    if kernel.dtypes is not None and dtype not in kernel.dtypes:
        # A forced backend that cannot take the dtype says so instead of computing something else.
        with granet_kernels.backend(backend), pytest.raises(BackendUnavailableError, match=name):
            opdef.op(*samples[0])
        return
    for i, args in enumerate(samples):
        msg = f"{name}[{backend}, {device}] sample {i} (seed {seed})"
        before = clone_args(args)
        with granet_kernels.backend(backend):
            out = opdef.op(*args)
        assert_unchanged(args, before, msg)
        check_against_reference(name, out, args, dtype, msg)


@pytest.mark.parametrize("name,backend,device,dtype", _cases(with_backend=False))
def test_auto_matches_reference(name, backend, device, dtype, seed):
    opdef = OPS[name]
    for i, args in enumerate(sample_inputs(name, device=device, dtype=dtype, seed=seed)):
        msg = f"{name}[auto, {device}] sample {i} (seed {seed})"
        with granet_kernels.backend("auto"):
            chosen = select_backend(opdef, args)
            out = opdef.op(*args)
        assert chosen in opdef.kernels, f"{msg}: auto chose {chosen!r}, which the op lacks"
        assert device_accepts(chosen, torch.device(device)), f"{msg}: auto chose {chosen!r} for {device}"
        kernel = opdef.kernels[chosen]
        assert kernel.dtypes is None or dtype in kernel.dtypes, f"{msg}: auto chose {chosen!r} for {dtype}"
        if device == "cpu":
            # CPU tensors: the native kernel where the op has one for this dtype, else the reference.
            cpu = opdef.kernels.get("cpu")
            expected = "cpu" if cpu is not None and (cpu.dtypes is None or dtype in cpu.dtypes) else "reference"
            assert chosen == expected, f"{msg}: auto chose {chosen!r}, expected {expected!r}"
        check_against_reference(name, out, args, dtype, msg)


def test_every_op_has_samples():
    for name in OPS:
        assert len(sample_inputs(name)) >= 3, name
