"""SparseConv2d against the dense masked convolution, every layout, awkward geometry."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from granet_kernels.nn import SparseConv2d

LAYOUTS = ["masked", "csr"]
# (N, C_in, C_out, H, W, kernel, stride, padding, dilation, density, bias)
GEOMETRIES = [
    (1, 1, 1, 1, 1, 1, 1, 0, 1, 1.0, True),
    (2, 3, 5, 7, 6, 3, 1, 1, 1, 0.3, True),
    (3, 4, 6, 9, 11, (3, 2), (2, 1), (0, 2), (2, 1), 0.5, False),
    (1, 16, 8, 5, 5, 1, 1, 0, 1, 0.0, True),
    (2, 8, 16, 14, 14, 3, 1, "same", 1, 0.1, False),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n,cin,cout,h,w,k,s,p,d,density,bias", GEOMETRIES)
def test_matches_dense_masked_conv(layout, n, cin, cout, h, w, k, s, p, d, density, bias):
    gen = torch.Generator().manual_seed(n + 7 * cin + cout)
    dense = torch.nn.Conv2d(cin, cout, k, s, p, d, bias=bias)
    module = SparseConv2d.from_dense(dense, density=density, layout=layout, generator=gen)
    mask = module.mask
    assert mask.shape == dense.weight.shape
    x = torch.randn(n, cin, h, w, generator=gen, requires_grad=True)
    y = module(x)
    xd = x.detach().double().requires_grad_()
    wd = (dense.weight.detach().double() * mask).requires_grad_()
    bd = dense.bias.detach().double().requires_grad_() if bias else None
    ref = F.conv2d(xd, wd, bd, module.stride, module.padding, module.dilation)
    torch.testing.assert_close(y.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    dy = torch.randn(y.shape, generator=gen)
    y.backward(dy)
    ref.backward(dy.double())
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-5, atol=1e-5)
    probe = SparseConv2d.from_dense(dense, mask=mask, layout=layout)
    with torch.no_grad():
        probe.weight.copy_(module.weight.grad)
    torch.testing.assert_close(probe.dense_weight().double(), wd.grad * mask, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_float64(layout):
    gen = torch.Generator().manual_seed(5)
    module = SparseConv2d(3, 4, 3, padding=1, density=0.5, layout=layout, dtype=torch.float64, generator=gen)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    fn = lambda x, w, b: torch.func.functional_call(module, {"weight": w, "bias": b}, (x,))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, module.weight.detach().clone().requires_grad_(),
                                         module.bias.detach().clone().requires_grad_()))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_state_dict_deepcopy_pickle_unbatched(layout):
    module = SparseConv2d(3, 4, 3, padding=1, density=0.4, layout=layout)
    sd = module.state_dict()
    assert set(sd) == {"weight", "mask", "bias"} and sd["weight"].shape == (4, 3, 3, 3)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    conv.load_state_dict({k: v for k, v in sd.items() if k != "mask"})
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(conv(x), module(x), rtol=1e-5, atol=1e-5)
    other = SparseConv2d(3, 4, 3, padding=1, layout=layout)
    other.load_state_dict(sd)
    assert torch.equal(other.mask, module.mask)
    torch.testing.assert_close(copy.deepcopy(module)(x), module(x))
    torch.testing.assert_close(pickle.loads(pickle.dumps(module))(x), module(x))
    torch.testing.assert_close(module(x[0]), module(x)[0])
    torch.testing.assert_close(module.to_dense()(x), module(x), rtol=1e-5, atol=1e-5)


def test_bad_inputs():
    module = SparseConv2d(3, 4, 3, density=0.5, layout="csr")
    with pytest.raises(ValueError, match="input"):
        module(torch.randn(2, 5, 6, 6))
    with pytest.raises(TypeError, match="dtype"):
        module(torch.randn(2, 3, 6, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="too small"):
        module(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match="groups"):
        SparseConv2d(4, 4, 3, groups=2)
    with pytest.raises(ValueError, match="layout 'bsr'"):
        SparseConv2d(4, 4, 3, layout="bsr")
    with pytest.raises(ValueError, match="mask"):
        module.set_mask(torch.ones(4, 3, 2, 2, dtype=torch.bool))


def test_bsr_is_refused_whichever_way_it_is_asked():
    conv = SparseConv2d.from_dense(nn.Conv2d(3, 4, 3), density=0.5, layout="csr")
    for ask in (lambda: conv.set_layout("bsr"), lambda: conv.set_mask(conv.mask, layout="bsr")):
        with pytest.raises(ValueError, match="bsr"):
            ask()
    assert conv.layout == "csr" and conv(torch.randn(1, 3, 5, 5)).shape == (1, 4, 3, 3)
