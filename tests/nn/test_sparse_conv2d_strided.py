"""SparseConv2d (CSR) at stride > 1 and small batches: rewritten as a stride-1 convolution over the
input's polyphase planes (1x1 kernels without padding: over every s-th pixel), so the CPU engine can
put pixels in its vector lanes. Same results as the dense masked convolution, gradients included."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from granet_kernels.nn import SparseConv2d
from granet_kernels.nn import conv as conv_module

# (kernel, stride, padding, H, W)
GEOMETRIES = [
    (3, 2, 1, 28, 28),
    (3, 2, 1, 7, 9),
    (3, 2, 0, 8, 13),
    ((3, 2), 2, (1, 0), 9, 14),
    (5, 2, 2, 13, 9),
    (2, 2, 0, 8, 8),
    (5, 3, 1, 14, 13),
    (1, 2, 0, 7, 14),  # 1x1: every s-th pixel
    (1, 3, 0, 13, 8),
    (1, 2, 1, 8, 9),  # 1x1 with padding: the planes
    (3, 2, 1, 1, 1),
]


def _check_against_dense(module, x, gen, dtype):
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    xs = x.clone().requires_grad_()
    y = module(xs)
    xd = x.clone().requires_grad_()
    wd = (module.dense_weight().detach() * module.mask).requires_grad_()
    bd = module.bias.detach().clone().requires_grad_()
    ref = F.conv2d(xd, wd, bd, module.stride, module.padding)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, **tol)
    dy = torch.randn(y.shape, generator=gen, dtype=dtype)
    y.backward(dy)
    ref.backward(dy)
    torch.testing.assert_close(xs.grad, xd.grad, **tol)
    torch.testing.assert_close(module.weight.grad, wd.grad[module.mask], **tol)  # CSR values: row-major mask order
    torch.testing.assert_close(module.bias.grad, bd.grad, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("k, s, p, h, w", GEOMETRIES)
def test_strided_small_batch_matches_dense(k, s, p, h, w, batch, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    dense = torch.nn.Conv2d(5, 7, k, stride=s, padding=p).to(dtype)
    module = SparseConv2d.from_dense(dense, density=0.4, layout="csr", generator=gen)
    x = torch.randn(batch, 5, h, w, generator=gen, dtype=dtype)
    if batch == 1:
        assert module._takes_polyphase(x) == (dtype == torch.float32 or conv_module._pixel_lanes_take(1, dtype))
    _check_against_dense(module, x, gen, dtype)
    with torch.no_grad():  # inference may choose the other route: same values
        torch.testing.assert_close(module(x), F.conv2d(x, module.dense_weight() * module.mask, module.bias,
                                                       module.stride, module.padding),
                                   rtol=1e-5, atol=1e-5)


def test_polyphase_index_follows_a_mask_change(seed):
    gen = torch.Generator().manual_seed(seed)
    module = SparseConv2d(6, 4, 3, stride=2, padding=1, density=0.5, layout="csr", generator=gen)
    x = torch.randn(1, 6, 10, 11, generator=gen)
    assert module._takes_polyphase(x.requires_grad_())
    _check_against_dense(module, x.detach(), gen, torch.float32)
    module.zero_grad(set_to_none=True)
    module.set_mask(torch.rand(module.weight_shape, generator=gen) < 0.3)  # repack: new index
    _check_against_dense(module, x.detach(), gen, torch.float32)


def test_polyphase_takes_the_stride_one_kernel(seed):
    gen = torch.Generator().manual_seed(seed)
    module = SparseConv2d(8, 8, 3, stride=2, padding=1, density=0.5, layout="csr", generator=gen)
    x = torch.randn(1, 8, 12, 12, generator=gen, requires_grad=True)
    seen = []
    real = conv_module.ops.sparse_conv2d

    def spy(input, crow, col, values, kernel_size, stride, *rest):
        seen.append((tuple(kernel_size), tuple(stride), input.shape[1]))
        return real(input, crow, col, values, kernel_size, stride, *rest)

    conv_module.ops.sparse_conv2d = spy
    try:
        module(x).sum().backward()
    finally:
        conv_module.ops.sparse_conv2d = real
    assert seen == [((2, 2), (1, 1), 32)]  # a 2x2 kernel over 4 phase planes per channel, stride 1


def test_large_batches_and_dilation_keep_the_direct_route():
    module = SparseConv2d(4, 4, 3, stride=2, padding=1, density=0.5, layout="csr")
    assert not module._takes_polyphase(torch.randn(64, 4, 8, 8))
    dilated = SparseConv2d(4, 4, 3, stride=2, padding=2, dilation=2, density=0.5, layout="csr")
    assert not dilated._takes_polyphase(torch.randn(1, 4, 8, 8))
    unstrided = SparseConv2d(4, 4, 3, stride=1, padding=1, density=0.5, layout="csr")
    assert not unstrided._takes_polyphase(torch.randn(1, 4, 8, 8))


def test_polyphase_index_is_not_reused_for_a_new_index_at_the_same_address(seed):
    # A repack with the same nonzero count can hand the new index the freed one's addresses, with
    # fresh version counters; the cache once keyed on data_ptr and _version alone and then served the
    # old mask's index (silently wrong outputs). Made deterministic here: the new index is written
    # into the old one's memory and installed as new tensor objects (.data aliases, version 0).
    gen = torch.Generator().manual_seed(seed)
    module = SparseConv2d(4, 4, 3, stride=2, padding=1, density=0.3, layout="csr", generator=gen)
    x = torch.randn(1, 4, 9, 9, generator=gen)
    module(x)  # caches the index
    old_crow, old_col = module.crow_indices, module.col_indices
    flat = torch.zeros(module.mask.numel(), dtype=torch.bool)
    flat[torch.randperm(flat.numel(), generator=gen)[:module.nnz]] = True
    module.set_mask(flat.reshape(module.weight_shape))
    with torch.no_grad():
        module.weight.normal_(generator=gen)
    old_crow.data.copy_(module.crow_indices)
    old_col.data.copy_(module.col_indices)
    new_crow, new_col = old_crow.data, old_col.data
    for alias, old in ((new_crow, old_crow), (new_col, old_col)):
        while alias._version < old._version:  # the same version numbers too
            alias.add_(0)
    module.crow_indices, module.col_indices = new_crow, new_col
    assert module.col_indices.data_ptr() == old_col.data_ptr() and module.col_indices is not old_col
    with torch.no_grad():
        torch.testing.assert_close(module(x), F.conv2d(x, module.dense_weight(), module.bias, 2, 1),
                                   rtol=1e-5, atol=1e-5)


def test_polyphase_index_follows_in_place_index_changes():
    module = SparseConv2d(3, 2, 3, stride=2, padding=1, mask=torch.ones(2, 3, 3, 3, dtype=torch.bool), layout="csr")
    x = torch.randn(1, 3, 8, 8)
    module(x)
    with torch.no_grad():  # move every nonzero of row 0 to another tap, in place
        module.col_indices[:27].copy_(torch.arange(26, -1, -1, dtype=torch.int32))  # row 0's filter mirrored
    dense = torch.zeros(2, 27)
    dense[0, module.col_indices[:27].long()] = module.weight[:27].detach()
    dense[1] = module.weight[27:].detach()
    torch.testing.assert_close(module(x), F.conv2d(x, dense.reshape(2, 3, 3, 3), module.bias, 2, 1),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", [1, 3])
def test_inference_mode_then_autograd(kernel):
    module = SparseConv2d(4, 4, kernel, stride=2, padding=kernel // 2, density=0.3, layout="csr")
    x = torch.randn(1, 4, 8, 8)
    ref = F.conv2d(x, module.dense_weight().detach(), module.bias.detach(), 2, kernel // 2)
    with torch.inference_mode():
        torch.testing.assert_close(module(x), ref, rtol=1e-5, atol=1e-5)
    # the index cached inside inference_mode serves calls that record autograd
    xs = x.clone().requires_grad_()
    y = module(xs)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert xs.grad is not None and module.weight.grad is not None


def test_module_built_in_inference_mode_runs_there():
    with torch.inference_mode():
        module = SparseConv2d(4, 4, 3, stride=2, padding=1, density=0.3, layout="csr")
        x = torch.randn(1, 4, 8, 8)
        for _ in range(2):
            torch.testing.assert_close(module(x), F.conv2d(x, module.dense_weight(), module.bias, 2, 1),
                                       rtol=1e-5, atol=1e-5)


def test_vmap_over_a_strided_csr_convolution():
    module = SparseConv2d(3, 4, 3, stride=2, padding=1, density=0.4, layout="csr")
    x = torch.randn(2, 3, 3, 7, 7)  # each call under vmap sees 3 images: a batch the pixel lanes take
    y = torch.vmap(module)(x)
    w, b = module.dense_weight().detach(), module.bias.detach()
    torch.testing.assert_close(y, torch.stack([F.conv2d(xi, w, b, 2, 1) for xi in x]), rtol=1e-5, atol=1e-5)
