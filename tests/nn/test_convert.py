"""sparsify_ / densify_ and the ERK / ER / uniform densities (GRANET.md's facts)."""

import math

import pytest
import torch
from torch import nn

import granet_kernels as gk
from granet_kernels.nn import SparseConv2d, SparseLinear, layer_densities


def vgg19_cifar():
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            c = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 10))


def test_erk_vgg19_facts():
    model = vgg19_cifar()
    gk.sparsify_(model, density=0.5, init="erk", layout="masked")
    sparse = [m for m in model.modules() if isinstance(m, (SparseConv2d, SparseLinear))]
    assert len(sparse) == 17
    total = sum(math.prod(m.weight_shape) for m in sparse)
    assert total == 20_024_000
    densities = [m.density for m in sparse]
    assert all(d == 1.0 for d in densities[:5]) and densities[-1] == 1.0
    for m, d in zip(sparse, densities):
        if m.weight_shape == (512, 512, 3, 3):
            assert round(d, 4) == 0.4326
    assert abs(sum(m.nnz for m in sparse) / total - 0.5) < 1e-4
    # BatchNorm and biases are untouched
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 16


def test_erk_epsilon():
    shapes = [(64, 3, 3, 3), (64, 64, 3, 3), (10, 64)]
    d = layer_densities(shapes, 0.3, "erk")
    n = [math.prod(s) for s in shapes]
    assert abs(sum(a * b for a, b in zip(d, n)) / sum(n) - 0.3) < 1e-9
    assert max(d) <= 1.0


@pytest.mark.parametrize("init", ["erk", "er", "uniform"])
def test_global_density_is_reached(init):
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 32), nn.Linear(32, 10))
    gk.sparsify_(model, density=0.2, init=init)
    sparse = [m for m in model.modules() if isinstance(m, (SparseConv2d, SparseLinear))]
    nnz = sum(m.nnz for m in sparse)
    total = sum(math.prod(m.weight_shape) for m in sparse)
    assert abs(nnz / total - 0.2) < 0.01
    out = model(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 10)


def test_masks_are_deterministic_and_first_layer_option():
    def build():
        return nn.Sequential(nn.Linear(20, 30), nn.Linear(30, 10))

    a, b = build(), build()
    gk.sparsify_(a, density=0.3, init="uniform", seed=7)
    gk.sparsify_(b, density=0.3, init="uniform", seed=7)
    assert torch.equal(a[0].mask, b[0].mask) and torch.equal(a[1].mask, b[1].mask)
    c = build()
    gk.sparsify_(c, density=0.3, init="uniform", dense_first_layer=True)
    assert isinstance(c[0], nn.Linear) and isinstance(c[1], SparseLinear)
    d = build()
    gk.sparsify_(d, density=0.3, filter_fn=lambda name, m: name == "1")
    assert isinstance(d[0], nn.Linear) and isinstance(d[1], SparseLinear)


def test_errors():
    with pytest.raises(ValueError, match="density"):
        gk.sparsify_(nn.Sequential(nn.Linear(2, 2)), density=0.0)
    with pytest.raises(ValueError, match="init"):
        gk.sparsify_(nn.Sequential(nn.Linear(2, 2)), density=0.5, init="gaussian")
    with pytest.raises(TypeError, match="model"):
        gk.sparsify_(None, density=0.5)


def test_tied_layers_stay_tied():
    lin = nn.Linear(6, 6)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    gk.sparsify_(model, density=0.5, layout="csr")
    assert isinstance(model[0], SparseLinear) and model[0] is model[2]
    x = torch.randn(3, 6)
    dense = model[0].to_dense()
    torch.testing.assert_close(model(x), dense(torch.relu(dense(x))))
    gk.densify_(model)
    assert type(model[0]) is nn.Linear and model[0] is model[2]


def test_attention_out_proj_stays_dense():
    # nn.MultiheadAttention reads out_proj.weight itself: a sparse module there would be bypassed.
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    gk.sparsify_(layer, density=0.3, layout="csr")
    assert type(layer.self_attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert isinstance(layer.linear1, SparseLinear) and isinstance(layer.linear2, SparseLinear)
    assert layer(torch.randn(2, 5, 16)).shape == (2, 5, 16)


def test_arguments_are_checked_before_any_layer_is_replaced():
    model = nn.Sequential(nn.Linear(4, 4), nn.Conv2d(3, 4, 3))
    for kwargs, error in [(dict(layout="bsr"), ValueError), (dict(layout="coo"), ValueError),
                          (dict(blocksize=0), ValueError), (dict(init="nope"), ValueError)]:
        with pytest.raises(error):
            gk.sparsify_(model, density=0.5, **kwargs)
        assert [type(m) for m in model] == [nn.Linear, nn.Conv2d]


def test_conversions_keep_training_mode_and_frozen_weights():
    model = nn.Sequential(nn.Linear(4, 4), nn.Conv2d(3, 4, 3)).eval()
    model[0].weight.requires_grad_(False)
    model[1].bias.requires_grad_(False)
    gk.sparsify_(model, density=0.5)
    assert not model[0].training and not model[1].training
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad
    assert model[1].weight.requires_grad and not model[1].bias.requires_grad
    gk.densify_(model)
    assert [type(m) for m in model] == [nn.Linear, nn.Conv2d]
    assert not model[0].training and not model[0].weight.requires_grad and not model[1].bias.requires_grad
    with pytest.raises(TypeError, match="densify_"):
        gk.densify_(SparseLinear(3, 3))
