"""Resuming from a checkpoint mid-run gives bit-identical masks, weights and optimizer state."""

import io

import pytest
import torch
from torch import nn

from granet_kernels import GraNet

from .test_engine import batch, config, make_opt, mlp, train_step, SmallCNN


def build(arch, opt_kind, cfg):
    model = mlp() if arch == "mlp" else SmallCNN()
    opt = make_opt(model, opt_kind)
    return model, opt, GraNet(model, opt, cfg)


def snapshot(model, opt, g):
    out = {"masks": [m.mask.clone() for m in g.layers.values()],
           "weights": [m.dense_weight().detach().clone() for m in g.layers.values()],
           "params": [p.detach().clone() for p in model.parameters()],
           "report": g.report()}
    out["state"] = [{k: v.clone() for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)} for p in model.parameters()]
    return out


def assert_same(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a["masks"], b["masks"]))
    assert all(torch.equal(x, y) for x, y in zip(a["weights"], b["weights"]))
    assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))
    for sa, sb in zip(a["state"], b["state"]):
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["report"] == b["report"]


@pytest.mark.parametrize("arch, opt_kind, layout, method", [
    ("mlp", "sgd", "auto", "granet"), ("mlp", "adam", "csr", "granet"), ("mlp", "sgd", "masked", "set"),
    ("cnn", "adamw", "auto", "granet"), ("mlp", "sgd", "bsr", "rigl"),
])
@pytest.mark.parametrize("stop", [5, 6])  # mid-interval, and right after an event
def test_bit_exact_resume(arch, opt_kind, layout, method, stop):
    cfg = config(layout=layout, method=method)
    steps = 14
    model, opt, g = build(arch, opt_kind, cfg)
    for step in range(1, steps + 1):
        train_step(model, opt, batch(model, seed=step))
        g.step()
    straight = snapshot(model, opt, g)

    model, opt, g = build(arch, opt_kind, cfg)
    for step in range(1, stop + 1):
        train_step(model, opt, batch(model, seed=step))
        g.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "granet": g.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=False)

    model, opt, g = build(arch, opt_kind, cfg)  # fresh process state: new masks drawn, then overwritten
    g.load_state_dict(checkpoint["granet"])
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["opt"])
    for step in range(stop + 1, steps + 1):
        train_step(model, opt, batch(model, seed=step))
        g.step()
    assert_same(snapshot(model, opt, g), straight)
