"""Native kernels give bit-identical results run after run with several threads: resumed training and
the ranks of a distributed run depend on it (GraNet's masks are decisions on these numbers)."""

import pytest
import torch

import granet_kernels as gk
from granet_kernels import SparseConv2d, SparseLinear


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _grads(module, x, gy):
    module.zero_grad()
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(gy)
    return [y.detach(), x.grad] + [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("make, shape", [
    (lambda: SparseConv2d(16, 24, 3, stride=2, padding=1, density=0.3, layout="csr"), (20, 16, 12, 12)),
    (lambda: SparseConv2d(32, 32, 3, padding=1, density=0.2, layout="csr"), (40, 32, 7, 7)),
    (lambda: SparseConv2d(24, 40, 1, density=0.4, layout="csr"), (33, 24, 5, 5)),
    (lambda: SparseLinear(300, 200, density=0.1, layout="csr"), (70, 300)),
    (lambda: SparseLinear(256, 192, density=0.2, layout="bsr", blocksize=16), (50, 256)),
])
def test_repeated_backward_is_bit_identical(two_threads, make, shape):
    torch.manual_seed(0)
    module = make()
    x = torch.randn(shape)
    gy = torch.randn(module(x).shape)
    first = _grads(module, x, gy)
    noise = SparseConv2d(8, 8, 3, padding=1, density=0.5, layout="csr")
    for i in range(6):
        # Other work in between shifts the threads' timing.
        noise(torch.randn(3 + i, 8, 9, 9)).sum().backward()
        again = _grads(module, x, gy)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


@pytest.mark.parametrize("conv", [
    dict(c_in=16, c_out=24, k=3, stride=2, padding=1, density=0.3, shape=(20, 16, 12, 12)),
    dict(c_in=32, c_out=32, k=3, stride=1, padding=1, density=0.2, shape=(40, 32, 7, 7)),
    dict(c_in=24, c_out=40, k=1, stride=1, padding=0, density=0.4, shape=(33, 24, 5, 5)),
])
def test_separate_conv_gradient_ops_are_bit_identical(two_threads, conv):
    """The dW-only and dX-only ops (not the fused backward that autograd uses) are deterministic too."""
    torch.manual_seed(0)
    m = SparseConv2d(conv["c_in"], conv["c_out"], conv["k"], stride=conv["stride"], padding=conv["padding"],
                     density=conv["density"], layout="csr")
    x = torch.randn(conv["shape"])
    gy = torch.randn(m(x).shape)
    args = (m.crow_indices, m.col_indices)
    geo = (m.kernel_size, m.stride, m.padding, m.dilation)
    first_dw = gk.ops.sparse_conv2d_dw(gy, x, *args, *geo)
    first_dx = gk.ops.sparse_conv2d_dx(gy, *args, m.weight.detach(), x.shape, *geo)
    for i in range(20):
        if i % 4 == 0:
            gk.ops.sparse_conv2d_dw(torch.randn(3 + i, 8, 9, 9), torch.randn(3 + i, 8, 9, 9),
                                    *_noise_filters(), [3, 3], [1, 1], [1, 1], [1, 1])
        assert torch.equal(first_dw, gk.ops.sparse_conv2d_dw(gy, x, *args, *geo))
        assert torch.equal(first_dx, gk.ops.sparse_conv2d_dx(gy, *args, m.weight.detach(), x.shape, *geo))


def _noise_filters():
    noise = SparseConv2d(8, 8, 3, padding=1, density=0.5, layout="csr")
    return noise.crow_indices, noise.col_indices


@pytest.mark.parametrize("n", [0, 1, 7, 33, 100])
def test_weight_gradient_alone_does_not_depend_on_the_thread_count(n):
    # csr_sddmm (dW of a layer whose input needs no gradient): each entry is summed by one thread, in
    # an order the thread count does not change.
    from granet_kernels.ops import reference
    from granet_kernels.ops.samples import random_csr

    gen = torch.Generator().manual_seed(n)
    crow, col, _ = random_csr(61, 90, 0.3, gen=gen)
    dy, x = torch.randn(n, 61, generator=gen), torch.randn(n, 90, generator=gen)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(torch.ops.granet.csr_sddmm(crow, col, dy, x))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1])
    torch.testing.assert_close(results[0], reference.csr_sddmm(crow, col, dy, x), rtol=1e-5, atol=1e-5)
