"""SparseLinear against the dense masked computation, every layout, awkward shapes."""

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import granet_kernels as gk
from granet_kernels.nn import SparseLinear

LAYOUTS = ["masked", "csr", "bsr"]
# (in, out, batch shape, density)
SHAPES = [(1, 1, (1,), 1.0), (37, 23, (5,), 0.3), (64, 17, (2, 3), 0.05), (33, 70, (1,), 0.0), (130, 9, (4,), 1.0)]


def dense_reference(module, x):
    w = module.dense_weight().detach().double()
    b = None if module.bias is None else module.bias.detach().double()
    return F.linear(x.double(), w, b)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("in_f,out_f,lead,density", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_backward_match_dense(layout, in_f, out_f, lead, density, bias):
    gen = torch.Generator().manual_seed(in_f * 31 + out_f)
    dense = torch.nn.Linear(in_f, out_f, bias=bias)
    module = SparseLinear.from_dense(dense, density=density, layout=layout, blocksize=8, generator=gen)
    assert module.layout == layout
    mask = module.mask
    assert mask.dtype == torch.bool and mask.shape == (out_f, in_f)
    assert torch.equal(module.dense_weight().detach(), dense.weight.detach() * mask)

    x = torch.randn(*lead, in_f, generator=gen, requires_grad=True)
    y = module(x)
    assert y.shape == (*lead, out_f)
    ref = dense_reference(module, x.detach())
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)

    dy = torch.randn(y.shape, generator=gen)
    y.backward(dy)
    xd = x.detach().double().requires_grad_()
    wd = (dense.weight.detach().double() * mask).requires_grad_()
    bd = None if not bias else dense.bias.detach().double().requires_grad_()
    F.linear(xd, wd, bd).backward(dy.double())
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-5, atol=1e-5)
    # The weight gradient exists only at kept positions (the layout's trainable tensor).
    grad_dense = SparseLinear.from_dense(dense, mask=mask, layout=layout, blocksize=8)
    with torch.no_grad():
        grad_dense.weight.copy_(module.weight.grad)
    torch.testing.assert_close(grad_dense.dense_weight().double(), wd.grad * mask, rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(module.bias.grad.double(), bd.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_float64(layout):
    gen = torch.Generator().manual_seed(3)
    dense = torch.nn.Linear(11, 7).double()
    module = SparseLinear.from_dense(dense, density=0.4, layout=layout, blocksize=4, generator=gen)
    x = torch.randn(3, 11, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: torch.func.functional_call(module, {"weight": w, "bias": b}, (x,)),
                                    (x, module.weight.detach().clone().requires_grad_(),
                                     module.bias.detach().clone().requires_grad_()))


def test_empty_rows_and_columns_csr():
    mask = torch.zeros(6, 9, dtype=torch.bool)
    mask[1, 2] = mask[4, 8] = mask[4, 0] = True
    module = SparseLinear.from_dense(torch.nn.Linear(9, 6), mask=mask, layout="csr")
    x = torch.randn(4, 9)
    torch.testing.assert_close(module(x).double(), dense_reference(module, x))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_set_mask_keeps_values_and_zeroes_new(layout):
    gen = torch.Generator().manual_seed(0)
    dense = torch.nn.Linear(20, 12)
    module = SparseLinear.from_dense(dense, density=0.5, layout=layout, blocksize=4, generator=gen)
    param = module.weight
    old_mask, old = module.mask.clone(), module.dense_weight().detach().clone()
    new_mask = torch.rand(12, 20, generator=gen) < 0.5
    module.set_mask(new_mask)
    assert module.weight is param  # optimizers keep their reference
    assert torch.equal(module.mask, new_mask)
    after = module.dense_weight().detach()
    kept = old_mask & new_mask
    assert torch.equal(after[kept], old[kept])
    assert bool((after[new_mask & ~old_mask] == 0).all())
    assert bool((after[~new_mask] == 0).all())


def test_auto_layout_follows_density():
    # The exact limits are the CPU's crossover table (tests/nn/test_crossover.py covers each table).
    low = SparseLinear(64, 64, density=0.02)
    high = SparseLinear(64, 64, density=1.0)
    assert low.layout == "csr" and high.layout == "masked"
    assert "layout=csr" in repr(low) and "density=0.0200" in repr(low)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_state_dict_roundtrip_and_dense_load(layout):
    gen = torch.Generator().manual_seed(1)
    module = SparseLinear(13, 8, density=0.3, layout=layout, blocksize=4, generator=gen)
    sd = module.state_dict()
    assert set(sd) == {"weight", "mask", "bias"}
    assert sd["weight"].shape == (8, 13) and sd["mask"].dtype == torch.bool
    other = SparseLinear(13, 8, density=0.9, layout=layout, blocksize=4)
    other.load_state_dict(sd)
    assert torch.equal(other.mask, module.mask)
    assert torch.equal(other.dense_weight(), module.dense_weight())
    linear = torch.nn.Linear(13, 8)
    linear.load_state_dict({k: v for k, v in sd.items() if k != "mask"})
    x = torch.randn(3, 13, generator=gen)
    torch.testing.assert_close(linear(x), module(x))
    # and back: a dense checkpoint loads into a sparse module, its nonzeros become the mask
    back = SparseLinear(13, 8, layout=layout, blocksize=4)
    back.load_state_dict(sd | {"mask": sd["mask"]})
    torch.testing.assert_close(back(x), module(x))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_deepcopy_pickle_to_dtype(layout):
    module = SparseLinear(10, 6, density=0.5, layout=layout, blocksize=4)
    x = torch.randn(2, 10)
    y = module(x)
    torch.testing.assert_close(copy.deepcopy(module)(x), y)
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf, weights_only=False)(x), y)
    torch.testing.assert_close(pickle.loads(pickle.dumps(module))(x), y)
    as64 = copy.deepcopy(module).to(torch.float64)
    assert as64.weight.dtype == torch.float64 and as64.mask.dtype == torch.bool
    torch.testing.assert_close(as64(x.double()), y.double(), rtol=1e-5, atol=1e-6)


def test_to_dense_and_densify_sparsify_roundtrip():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    gk.sparsify_(model, density=0.5, init="uniform", layout="csr")
    assert all(isinstance(model[i], SparseLinear) for i in (0, 2))
    x = torch.randn(3, 8)
    y = model(x)
    gk.densify_(model)
    assert type(model[0]) is torch.nn.Linear
    torch.testing.assert_close(model(x), y)


@pytest.mark.parametrize("bad,match", [
    (lambda m: m(torch.randn(2, 5)), "in_features|features"),
    (lambda m: m(torch.randn(2, 10, dtype=torch.float64)), "dtype"),
    (lambda m: m(torch.randn(2, 10, device="meta")), "device|meta"),
    (lambda m: m.set_mask(torch.ones(3, 3, dtype=torch.bool)), "mask"),
    (lambda m: m.set_mask(torch.full((6, 10), 2.0)), "mask"),
    (lambda m: m.set_layout("coo"), "layout"),
])
def test_bad_input_raises_clear_error(bad, match):
    module = SparseLinear(10, 6, density=0.5, layout="csr")
    with pytest.raises((ValueError, TypeError), match=match):
        bad(module)


def test_constructor_errors():
    with pytest.raises(ValueError, match="layout"):
        SparseLinear(4, 4, layout="dense")
    with pytest.raises(ValueError, match="density"):
        SparseLinear(4, 4, density=1.5)
    with pytest.raises(ValueError, match="mask or density"):
        SparseLinear(4, 4, density=0.5, mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="nn.Linear"):
        SparseLinear.from_dense(torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="blocksize"):
        SparseLinear(4, 4, layout="bsr", blocksize=0)


@pytest.mark.parametrize("layout", ["masked", "csr", "bsr"])
def test_set_mask_carries_the_gradient_like_the_values(layout):
    torch.manual_seed(0)
    layer = SparseLinear(8, 5, density=0.3, layout=layout, blocksize=2)
    x = torch.randn(3, 8)
    layer(x).sum().backward()
    old_grad = layer.from_layout(layer.weight.grad)
    new_mask = torch.rand(5, 8) < 0.6
    layer.set_mask(new_mask)
    assert layer.weight.grad.shape == layer.weight.shape
    torch.testing.assert_close(layer.from_layout(layer.weight.grad), torch.where(new_mask, old_grad, 0))
    layer(x).sum().backward()  # accumulates into the carried gradient


def test_constructor_argument_errors_name_the_argument():
    dense = nn.Linear(8, 4)
    for kwargs, error, match in [
        (dict(density=-0.1), ValueError, "density"),
        (dict(density=1.5), ValueError, "density"),
        (dict(density="0.5"), ValueError, "density"),
        (dict(mask=[[1] * 8] * 4), TypeError, "mask"),
        (dict(mask=torch.full((4, 8), 7)), ValueError, "mask"),
        (dict(blocksize=2.5, layout="bsr"), ValueError, "blocksize"),
        (dict(layout="coo"), ValueError, "layout"),
    ]:
        with pytest.raises(error, match=match):
            SparseLinear.from_dense(dense, **kwargs)


@pytest.mark.parametrize("layout", ["csr", "bsr", "masked"])
def test_module_built_and_run_in_inference_mode(layout):
    # inference tensors track no version: the index checks must not try to cache on them
    with torch.inference_mode():
        layer = SparseLinear(40, 24, density=0.3, layout=layout, blocksize=8)
        x = torch.randn(5, 40)
        for _ in range(2):
            torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.dense_weight(), layer.bias),
                                       rtol=1e-5, atol=1e-5)


def test_meta_device_deferred_initialisation():
    # No mask values on meta: "auto" builds the masked layout there and repacks by density when
    # load_state_dict gives it real weights; layouts that store only the kept weights say why not.
    for layout in ("csr", "bsr"):
        with pytest.raises(ValueError, match=f"layout '{layout}'.*meta"):
            SparseLinear(16, 8, density=0.5, layout=layout, device="meta")
    meta = SparseLinear(64, 32, density=0.05, device="meta")
    assert meta.layout == "masked" and "meta" in repr(meta)
    assert meta(torch.empty(3, 64, device="meta")).shape == (3, 32)
    ref = SparseLinear(64, 32, density=0.05)
    layer = meta.to_empty(device="cpu")
    layer.load_state_dict(ref.state_dict())
    assert layer.layout == ref.layout == "csr"
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), ref(x))
