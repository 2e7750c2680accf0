"""The GraNet engine on real sparse modules: events against a brute-force reference, invariants after
every step, every method, layouts, optimizers, block units, errors."""

import copy
import math

import pytest
import torch
from torch import nn

import granet_kernels as gk
from granet_kernels import GraNet, GraNetConfig, SparseConv2d, SparseLinear

from . import engine_reference as ref


def mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 48), nn.ReLU(), nn.Linear(48, 36), nn.ReLU(), nn.Linear(36, 5)).to(dtype)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 4 * 4, 6)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.bn(self.conv2(x)))
        return self.fc(x.flatten(1))


def batch(model, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    if isinstance(model, SmallCNN):
        return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 6, (n,), generator=g)
    dtype = next(model.parameters()).dtype
    return torch.randn(n, 20, generator=g, dtype=dtype), torch.randint(0, 5, (n,), generator=g)


def train_step(model, opt, data):
    x, y = data
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def make_opt(model, kind="sgd"):
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-2)
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)


def config(**kw):
    base = dict(method="granet", init_density=0.6, final_density=0.1, init_prune_epoch=0, final_prune_epoch=3,
                total_epochs=12, iters_per_epoch=3, update_frequency=3, seed=3)
    base.update(kw)
    return GraNetConfig(**base)


def dense_states(g, module):
    return {k: module.from_layout(v) for k, v in g.optimizer.state.get(module.weight, {}).items()
            if isinstance(v, torch.Tensor) and v.dim() > 0}


def assert_invariants(g):
    for name, m in g.layers.items():
        mask = m.mask
        w = m.dense_weight().detach()
        assert torch.all(w[~mask] == 0), name
        lm = m.layout_mask()
        if lm is not None:  # stored entries outside the mask are exact zeros, state included
            assert torch.all(m.weight.detach()[~lm] == 0), name
            for k, v in g.optimizer.state.get(m.weight, {}).items():
                if isinstance(v, torch.Tensor) and v.shape == m.weight.shape:
                    assert torch.all(v[~lm] == 0), (name, k)


@pytest.mark.parametrize("layout", ["masked", "csr", "bsr", "auto"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_event_matches_bruteforce_reference(layout, arch):
    model = mlp() if arch == "mlp" else SmallCNN()
    opt = make_opt(model)
    g = GraNet(model, opt, config(layout=layout))
    assert all(isinstance(m, (SparseLinear, SparseConv2d)) for m in g.layers.values())
    assert {id(p) for grp in opt.param_groups for p in grp["params"]} == {id(p) for p in model.parameters()}
    for step in range(1, 13):
        data = batch(model, seed=step)
        event = g.schedule.is_event(step)
        if event:  # the dense gradient of this minibatch, from a dense copy
            dense = gk.densify_(copy.deepcopy(model))
            x, y = data
            nn.functional.cross_entropy(dense(x), y).backward()
            ref_grads = [dict(dense.named_modules())[n].weight.grad for n in g.layers]
        train_step(model, opt, data)
        if event:
            names = list(g.layers)
            mods = [g.layers[n] for n in names]
            assert set(g.capture.grads) == set(names)
            for n, rg in zip(names, ref_grads):
                torch.testing.assert_close(g.capture.grads[n], rg, rtol=1e-4, atol=1e-6)
            weights = [m.dense_weight().detach().clone() for m in mods]
            masks = [m.mask.clone() for m in mods]
            states = [dense_states(g, m) for m in mods]
            density = g.density_at(step) if g.schedule.prunes_at(step) else None
            new, keep = ref.event(weights, masks, [g.capture.grads[n].clone() for n in names], density=density,
                                  rate=g.prune_rate_at(step))
        nnz_before = [m.nnz for m in g.layers.values()]
        g.step()
        assert_invariants(g)
        if event:
            for m, nm, kp, w, st in zip(mods, new, keep, weights, states):
                assert torch.equal(m.mask, nm)
                expected = torch.where(kp & nm, w, torch.zeros(()))
                assert torch.equal(m.dense_weight().detach(), expected)
                for k, v in dense_states(g, m).items():
                    assert torch.equal(v, torch.where(kp & nm, st[k], torch.zeros(()))), k
            if density is None:  # regrowth alone keeps every layer's nnz
                assert [m.nnz for m in g.layers.values()] == nnz_before
            else:
                total = sum(m.numel() for m in masks)
                assert sum(m.nnz for m in g.layers.values()) == int(total * density)
    assert g.prune_events == 2 and g.regrow_events == 4


@pytest.mark.parametrize("method", ["rigl", "set"])
@pytest.mark.parametrize("layout", ["masked", "csr"])
def test_fixed_density_methods_keep_nnz_and_move_masks(method, layout):
    model = mlp()
    opt = make_opt(model)
    g = GraNet(model, opt, config(method=method, layout=layout, final_density=0.2))
    nnz = [m.nnz for m in g.layers.values()]
    first = [m.mask.clone() for m in g.layers.values()]
    for step in range(1, 13):
        train_step(model, opt, batch(model, seed=step))
        g.step()
        assert [m.nnz for m in g.layers.values()] == nnz
        assert_invariants(g)
    assert g.prune_events == 0 and g.regrow_events == 4
    assert any(not torch.equal(a, m.mask) for a, m in zip(first, g.layers.values()))
    assert abs(g.global_density() - 0.2) < 0.01


def test_static_and_gmp():
    model = mlp()
    opt = make_opt(model)
    g = GraNet(model, opt, config(method="static", final_density=0.3))
    first = [m.mask.clone() for m in g.layers.values()]
    for step in range(1, 13):
        train_step(model, opt, batch(model, seed=step))
        assert g.step() is False
        assert_invariants(g)
    assert all(torch.equal(a, m.mask) for a, m in zip(first, g.layers.values()))

    model = mlp()
    opt = make_opt(model)
    g = GraNet(model, opt, config(method="gmp", init_density=1.0, final_density=0.1, final_prune_epoch=6))
    assert g.global_density() == 1.0
    history = []
    for step in range(1, 19):
        train_step(model, opt, batch(model, seed=step))
        g.step()
        history.append(g.global_density())
        assert_invariants(g)
    total = sum(math.prod(m.weight_shape) for m in g.layers.values())
    assert history[-1] == int(total * g.density_at(18)) / total
    assert all(b <= a for a, b in zip(history, history[1:]))  # pruning only
    assert g.regrow_events == 0 and g.prune_events == 5


def test_layerwise_pruning_keeps_the_distribution():
    model = mlp()
    opt = make_opt(model)
    g = GraNet(model, opt, config(global_prune=False, method="gmp"))
    init = dict(g.initial_densities)
    for step in range(1, 4):
        train_step(model, opt, batch(model, seed=step))
        g.step()
    factor = g.density_at(3) / 0.6
    for n, m in g.layers.items():
        assert m.nnz == int(math.prod(m.weight_shape) * min(1.0, init[n] * factor))


@pytest.mark.parametrize("block", [2, 4])
def test_block_granular_masks(block):
    model = mlp()
    opt = make_opt(model)
    g = GraNet(model, opt, config(block_size=block))
    for step in range(1, 13):
        train_step(model, opt, batch(model, seed=step))
        g.step()
        for n, m in g.layers.items():
            u = g.units[n]
            assert torch.equal(u.expand(u.mask(m.mask)), m.mask), "masks are whole blocks"
        assert_invariants(g)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_optimizers_state_zero_after_every_step(kind):
    model = mlp()
    opt = make_opt(model, kind)
    g = GraNet(model, opt, config(layout="masked"))
    for step in range(1, 13):
        train_step(model, opt, batch(model, seed=step))
        g.step()
        assert_invariants(g)
        for m in g.layers.values():
            for v in dense_states(g, m).values():
                assert torch.all(v[~m.mask] == 0)


def test_same_seed_same_masks_random_growth():
    def run():
        model = mlp()
        opt = make_opt(model)
        g = GraNet(model, opt, config(method="set"))
        for step in range(1, 13):
            train_step(model, opt, batch(model, seed=step))
            g.step()
        return [m.mask for m in g.layers.values()]

    assert all(torch.equal(a, b) for a, b in zip(run(), run()))


def test_quirk_option_keeps_values_of_dropped_and_regrown():
    model = mlp()
    opt = make_opt(model)
    g = GraNet(model, opt, config(method="rigl", zero_dropped_regrown=False, prune_rate=0.9, prune_rate_min=0.9))
    for step in range(1, 4):
        train_step(model, opt, batch(model, seed=step))
        if step == 3:
            before = [(m.mask.clone(), m.dense_weight().detach().clone()) for m in g.layers.values()]
        g.step()
    for (mask, w), m in zip(before, g.layers.values()):
        both = mask & m.mask
        assert torch.equal(m.dense_weight().detach()[both], w[both])


def test_weights_dropped_and_regrown_in_place_restart_at_zero():
    # The only nonzero gradients are at the active positions, so the weights dropped at the event are
    # regrown where they were and the mask does not change: they must still restart at 0, state too.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 1, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = GraNet(model, opt, GraNetConfig(method="rigl", final_density=0.5, sparse_init="uniform", layout="masked",
                                        total_epochs=10, iters_per_epoch=1, update_frequency=1, prune_rate=0.5,
                                        prune_rate_min=0.5, seed=0))
    layer = g.layers["0"]
    mask = layer.mask.clone()
    x = torch.randn(4, 8) * mask[0]  # inactive inputs are 0: inactive positions get no gradient
    opt.zero_grad()
    nn.functional.mse_loss(model(x), torch.randn(4, 1)).backward()
    opt.step()
    w = layer.dense_weight().detach().clone()
    dropped = mask.nonzero()[w[mask].abs().argsort()[:2]]  # ceil(0.5 * 4) smallest active weights
    g.step()
    assert g.regrow_events == 1 and torch.equal(layer.mask, mask)
    momentum = layer.from_layout(opt.state[layer.weight]["momentum_buffer"])
    for r, c in dropped.tolist():
        assert layer.dense_weight()[r, c] == 0 and momentum[r, c] == 0
    kept = mask.clone()
    kept[dropped[:, 0], dropped[:, 1]] = False
    assert torch.equal(layer.dense_weight().detach()[kept], w[kept])


def test_optimizer_must_hold_the_prunable_weights():
    model = mlp()
    with pytest.raises(ValueError, match="optimizer does not hold the weight of layer '0'"):
        GraNet(model, make_opt(mlp()), config())  # another model's parameters
    model = mlp()
    with pytest.raises(ValueError, match="optimizer does not hold the weight of layer '2'"):
        GraNet(model, torch.optim.SGD([model[0].weight, model[4].weight], lr=0.1), config())
    model = mlp()
    model[2].weight.requires_grad_(False)  # a frozen layer need not be in it
    GraNet(model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1), config())


def test_layers_sharing_a_parameter_are_refused():
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
    model[2].weight = model[0].weight
    with pytest.raises(ValueError, match="shares its weight Parameter"):
        GraNet(model, make_opt(model), config())
    with pytest.raises(ValueError, match="shares its weight Parameter"):
        gk.sparsify_(model, density=0.5)
    assert isinstance(model[0], nn.Linear) and model[2].weight is model[0].weight  # nothing converted
    emb = nn.Embedding(10, 6)
    lm = nn.ModuleDict({"emb": emb, "head": nn.Linear(6, 10, bias=False)})
    lm["head"].weight = emb.weight  # tied input and output embeddings
    with pytest.raises(ValueError, match="'head' shares its weight Parameter with 'emb'"):
        gk.sparsify_(lm, density=0.5)
    gk.sparsify_(lm, density=0.5, filter_fn=lambda name, m: name != "head")  # left out: fine


def test_quirk_option_zeroes_what_pruning_removed():
    # zero_dropped_regrown=False keeps what the drop step removed and regrew; a weight removed by the
    # global pruning of the same event and regrown restarts at 0, as in the reference code.
    model = nn.Sequential(nn.Linear(8, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.01, 0.02, 0.03, 0.04, 5., 6., 7., 8.]]))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = GraNet(model, opt, GraNetConfig(method="granet", init_density=1.0, final_density=0.5, sparse_init="uniform",
                                        layout="masked", init_prune_epoch=0, final_prune_epoch=2, total_epochs=10,
                                        iters_per_epoch=1, update_frequency=1, prune_rate=0.5, prune_rate_min=0.5,
                                        zero_dropped_regrown=False))
    layer = g.layers["0"]
    x = torch.zeros(4, 8)
    x[:, :4] = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) * 10  # gradient at the smallest only
    opt.zero_grad()
    nn.functional.mse_loss(model(x), torch.ones(4, 1)).backward()
    opt.step()
    g.step()  # prunes columns 0-3, drops two of 4-7, regrows two of 0-3
    mask = layer.mask[0]
    regrown = mask[:4].nonzero().flatten()
    assert len(regrown) == 2
    momentum = layer.from_layout(opt.state[layer.weight]["momentum_buffer"])[0]
    assert (layer.dense_weight()[0, regrown] == 0).all() and (momentum[regrown] == 0).all()


def test_frozen_layers_are_left_alone():
    model = mlp()
    model[2].requires_grad_(False)
    before = model[2].weight.detach().clone()
    g = GraNet(model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1), config())
    assert list(g.layers) == ["0", "4"] and isinstance(model[2], nn.Linear)
    assert torch.equal(model[2].weight, before)


def test_a_schedule_without_events_warns():
    model = mlp()
    with pytest.warns(RuntimeWarning, match="no pruning event falls within the 160 training steps"):
        GraNet(model, make_opt(model), GraNetConfig(method="granet", init_density=0.5, final_density=0.05,
                                                    total_epochs=160, update_frequency=1000))
    model = mlp()
    with pytest.warns(RuntimeWarning, match="no regrowth event"):
        GraNet(model, make_opt(model), GraNetConfig(method="rigl", final_density=0.5, total_epochs=3,
                                                    update_frequency=10))
    with pytest.raises(ValueError, match="init_prune_epoch must be a finite number"):
        GraNet(mlp(), make_opt(mlp()), GraNetConfig(init_prune_epoch=float("nan")))


def test_report_and_flops():
    model = SmallCNN()
    opt = make_opt(model)
    g = GraNet(model, opt, config())
    for step in range(1, 7):
        train_step(model, opt, batch(model, seed=step))
        g.step()
    r = g.report()
    assert r["step"] == 6 and r["events"] == 2 and r["prune_events"] == 2 and r["regrow_events"] == 2
    assert set(r["layer_densities"]) == {"conv1", "conv2", "fc"}
    # conv1: 8*3*9 weights at 8x8 positions, conv2 12*8*9 at 4x4, fc 192*6
    costs = {"conv1": 8 * 27 * 64, "conv2": 12 * 72 * 16, "fc": 192 * 6}
    expected = sum(costs[n] * d for n, d in r["layer_densities"].items()) / sum(costs.values())
    assert r["inference_flops_x_dense"] == pytest.approx(expected)
    assert expected < r["train_flops_x_dense"] < 1.0
    assert r["global_density"] == pytest.approx(g.global_density())


def test_errors():
    model = mlp()
    with pytest.raises(TypeError, match="optimizer"):
        GraNet(model, torch.optim.RMSprop(model.parameters()), config())
    with pytest.raises(TypeError, match="optimizer"):
        GraNet(model, "sgd", config())
    with pytest.raises(ValueError, match="no prunable layers"):
        m = nn.Sequential(nn.ReLU())
        GraNet(m, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), config())
    with pytest.raises(TypeError, match="config"):
        GraNet(model, make_opt(model), {"method": "granet"})
    with pytest.raises(ValueError, match="final_density"):
        GraNet(model, make_opt(model), final_density=2.0)
    model = mlp()
    g = GraNet(model, make_opt(model), config())
    state = g.state_dict()
    model2 = mlp()
    g2 = GraNet(model2, make_opt(model2), config(final_density=0.2))
    with pytest.raises(ValueError, match="final_density"):
        g2.load_state_dict(state)


def test_dense_first_layer_and_existing_sparse_modules():
    model = mlp()
    g = GraNet(model, make_opt(model), config(dense_first_layer=True))
    assert isinstance(model[0], nn.Linear) and not isinstance(model[0], SparseLinear)
    assert list(g.layers) == ["2", "4"]
    model = mlp()
    gk.sparsify_(model, density=0.5, layout="csr")
    opt = make_opt(model)
    params = [id(p) for p in model.parameters()]
    g = GraNet(model, opt, config(layout="csr"))
    assert [id(p) for p in model.parameters()] == params  # Parameters kept
    assert abs(g.global_density() - 0.6) < 0.02


@pytest.mark.parametrize("layout", ["csr", "bsr"])
def test_graph_kept_alive_across_an_event(layout):
    """A loss kept from the previous iteration holds the old gradient accumulator of each weight;
    the repack at an event must not leave the next backward expecting the old shape."""
    model = SmallCNN() if layout == "csr" else mlp()
    opt = make_opt(model)
    g = GraNet(model, opt, config(layout=layout))
    losses = []
    for step in range(1, 8):
        x, y = batch(model, seed=step)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss)  # keeps every graph alive
        opt.step()
        g.step()
    assert g.events == 2


def test_dense_gradient_captured_through_inplace_ops():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 48), nn.ReLU(inplace=True), nn.Linear(48, 5))
    opt = make_opt(model)
    g = GraNet(model, opt, config(layout="csr"))
    for step in range(1, 4):
        x, y = batch(model, seed=step)
        if step == 3:
            dense = gk.densify_(copy.deepcopy(model))
            nn.functional.cross_entropy(dense(x), y).backward()
        train_step(model, opt, (x, y))
        if step == 3:
            for n in g.layers:
                torch.testing.assert_close(g.capture.grads[n], dict(dense.named_modules())[n].weight.grad)
        g.step()
