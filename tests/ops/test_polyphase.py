"""`polyphase_planes` (`_native_polyphase_split` / `_native_polyphase_merge`): the phase planes of a
zero-padded input, against pad + pixel_unshuffle, and their gradient against autograd's."""

import pytest
import torch
import torch.nn.functional as F

from granet_kernels import ops

# (N, C, H, W, stride, pad_h, pad_w, out_h, out_w); planes shorter than the padded input crop it
CASES = [
    (1, 3, 8, 8, 2, 1, 1, 5, 5),
    (2, 4, 7, 9, 2, 0, 2, 4, 6),
    (1, 2, 13, 14, 3, 1, 2, 5, 6),
    (3, 1, 5, 5, 2, 2, 0, 2, 3),  # crops rows and columns at the end
    (1, 5, 1, 1, 2, 1, 1, 2, 2),
    (2, 2, 6, 6, 1, 1, 1, 8, 8),  # stride 1: zero padding
]


def _reference(x, s, pad_h, pad_w, out_h, out_w):
    padded = F.pad(x, (pad_w, s * out_w - x.shape[3] - pad_w, pad_h, s * out_h - x.shape[2] - pad_h))
    return F.pixel_unshuffle(padded, s)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_planes_and_their_gradient_match_pad_and_pixel_unshuffle(case, dtype, seed):
    n, c, h, w, s, pad_h, pad_w, out_h, out_w = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = ops.polyphase_planes(xa, s, pad_h, pad_w, out_h, out_w)
    want = _reference(xb, s, pad_h, pad_w, out_h, out_w)
    assert torch.equal(got, want)
    grad = torch.randn(want.shape, generator=g, dtype=dtype)
    got.backward(grad)
    want.backward(grad)
    assert torch.equal(xa.grad, xb.grad)


def test_empty_planes_and_their_zero_gradient():
    # (pixel_unshuffle itself returns [1, 2, 0, 6] for this input, so no reference here)
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    planes = ops.polyphase_planes(x, 2, 0, 0, 0, 3)
    assert planes.shape == (1, 8, 0, 3)
    planes.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_planes_of_a_non_contiguous_input(seed):
    x = torch.randn(2, 3, 9, 10, generator=torch.Generator().manual_seed(seed)).transpose(2, 3)
    torch.testing.assert_close(ops.polyphase_planes(x, 2, 1, 1, 6, 5), _reference(x, 2, 1, 1, 6, 5), rtol=0, atol=0)


def test_gradcheck_float64(seed):
    x = torch.randn(1, 2, 5, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.polyphase_planes(t, 2, 1, 0, 3, 3), (x,))


def test_bad_input_raises_naming_it():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="x"):
        ops.polyphase_planes(x[0], 2, 0, 0, 2, 2)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        torch.ops.granet._native_polyphase_split(x, 0, 0, 0, 2, 2)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        torch.ops.granet._native_polyphase_split(x, 2, -1, 0, 2, 2)
    with pytest.raises(ValueError, match="plane size must be >= 0"):
        torch.ops.granet._native_polyphase_split(x, 2, 0, 0, -1, 2)
    with pytest.raises(ValueError, match="multiple of stride"):
        torch.ops.granet._native_polyphase_merge(torch.randn(1, 3, 2, 2), 2, 0, 0, 4, 4)
    with pytest.raises(ValueError, match="output size must be >= 0"):
        torch.ops.granet._native_polyphase_merge(torch.randn(1, 4, 2, 2), 2, 0, 0, -4, 4)
