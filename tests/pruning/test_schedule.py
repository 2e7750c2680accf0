"""The schedule facts of GRANET.md, through the public API (GraNetConfig -> GraNet.density_at / prune_rate_at)."""

import pytest
import torch
from torch import nn

from granet_kernels import GraNet, GraNetConfig
from granet_kernels.pruning import Schedule

# CIFAR-10: 45,000 training images, batch 128 -> 352 iterations per epoch, 160 epochs.
CIFAR = dict(method="granet", init_density=0.5, final_density=0.1, init_prune_epoch=0, final_prune_epoch=80,
             total_epochs=160, iters_per_epoch=352, update_frequency=1000, prune_rate=0.5, prune_rate_min=0.005)


def test_cifar_schedule_facts():
    s = Schedule(GraNetConfig(**CIFAR))
    total = 160 * 352
    prune_steps = [t for t in range(1, total + 1) if s.prunes_at(t)]
    assert prune_steps == list(range(1000, 27001, 1000))
    assert sum(s.regrows_at(t) for t in range(1, total + 1)) == 56
    assert [round(s.density_at(t), 4) for t in (1000, 2000, 3000, 4000)] == [0.4587, 0.4203, 0.3847, 0.3519]
    assert round(s.density_at(26000), 6) == 0.100146
    assert round(s.density_at(27000), 6) == 0.100018
    # Between events and after tf the density holds.
    assert s.density_at(999) == 0.5 and s.density_at(1999) == s.density_at(1000)
    assert s.density_at(total) == s.density_at(27000)
    assert round(s.prune_rate_at(1000), 4) == 0.4996
    assert round(s.prune_rate_at(10000), 4) == 0.4625
    assert s.prune_rate_at(0) == pytest.approx(0.5) and s.prune_rate_at(total) == pytest.approx(0.005)


def test_schedule_through_the_engine():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = GraNet(model, opt, GraNetConfig(**CIFAR))
    assert round(g.density_at(1000), 4) == 0.4587 and round(g.prune_rate_at(10000), 4) == 0.4625


def test_late_start_and_methods():
    c = dict(CIFAR, init_prune_epoch=10, final_prune_epoch=20, total_epochs=40, iters_per_epoch=100, update_frequency=100)
    s = Schedule(GraNetConfig(**c))
    assert not s.is_event(900) and s.prunes_at(1000) and s.prunes_at(1900) and not s.prunes_at(2000)
    assert s.density_at(1000) == 0.5  # k = k0: the cubic starts at d_i
    assert s.regrows_at(4000) and not s.regrows_at(950)
    gmp = Schedule(GraNetConfig(**dict(c, method="gmp")))
    assert gmp.prunes_at(1500 - 500) and not gmp.regrows_at(1000)
    rigl = Schedule(GraNetConfig(**dict(c, method="rigl")))
    assert not rigl.prunes_at(1000) and rigl.regrows_at(1000) and rigl.density_at(5000) == 0.1
    static = Schedule(GraNetConfig(**dict(c, method="static")))
    assert not any(static.is_event(t) for t in range(1, 4001))


@pytest.mark.parametrize("bad, match", [
    (dict(method="magic"), "method"),
    (dict(final_density=0.0), "final_density"),
    (dict(init_density=1.5), "init_density"),
    (dict(init_density=0.1, final_density=0.5), "final_density"),
    (dict(init_prune_epoch=10, final_prune_epoch=5), "final_prune_epoch"),
    (dict(update_frequency=0), "update_frequency"),
    (dict(block_size=0), "block_size"),
    (dict(prune_rate=0.1, prune_rate_min=0.2), "prune_rate"),
    (dict(sparse_init="gaussian"), "sparse_init"),
    (dict(growth="momentum"), "growth"),
    (dict(layout="coo"), "layout"),
    (dict(total_epochs=0), "total_epochs"),
    (dict(total_epochs=0.5, iters_per_epoch=1), "at least one step"),
    (dict(seed=1.5), "seed"),
])
def test_bad_config_names_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        GraNetConfig(**bad)


def test_config_roundtrip():
    c = GraNetConfig(**CIFAR, sparse_init="erk")
    assert c.sparse_init == "ERK"
    assert GraNetConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown GraNetConfig fields: nope"):
        GraNetConfig.from_dict({"nope": 1})
