"""torch.compile(fullgraph=True), FlopCounterMode and the memory bound of the CSR layout."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import granet_kernels as gk
from granet_kernels.nn import SparseConv2d, SparseLinear


def small_model(layout):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    gk.sparsify_(model, density=0.3, init="uniform", layout=layout)
    return model


@pytest.mark.parametrize("layout", ["masked", "csr"])
def test_compile_fullgraph_forward_backward(layout):
    model = small_model(layout)
    x = torch.randn(4, 3, 6, 6)
    eager_out = model(x)
    eager_out.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-5)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", ["masked", "csr", "bsr"])
def test_flop_counter_counts_sparse_flops(layout):
    module = SparseLinear(64, 48, density=0.25, layout=layout, blocksize=16, bias=False)
    x = torch.randn(8, 64, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        module(x).sum().backward()
    # BSR products run (and count) whole stored blocks; the other layouts count the mask's nonzeros
    nnz_stored = module.weight.numel() if layout == "bsr" else module.nnz
    forward = 2 * nnz_stored * 8
    assert counter.get_total_flops() == 3 * forward


@pytest.mark.parametrize("layout", ["masked", "csr"])
def test_flop_counter_conv(layout):
    module = SparseConv2d(4, 6, 3, padding=1, stride=(1, 2), density=0.5, layout=layout)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    product = 2 * module.nnz * 2 * 5 * 3  # 2 * nnz * N * H_out * W_out
    with FlopCounterMode(display=False) as counter:
        y = module(x)
    assert counter.get_total_flops() == product
    with FlopCounterMode(display=False) as counter:
        module(x).sum().backward()
    assert counter.get_total_flops() == 3 * product


def test_csr_training_memory_bound():
    """Parameter + gradient + SGD momentum bytes <= 1.5 * d * dense bytes + index bytes."""
    density = 0.05
    module = SparseLinear(512, 256, density=density, layout="csr", bias=False)
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    module(torch.randn(4, 512)).sum().backward()
    opt.step()
    value_bytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    trained = value_bytes(module.weight) + value_bytes(module.weight.grad)
    trained += value_bytes(opt.state[module.weight]["momentum_buffer"])
    dense_bytes = 3 * 512 * 256 * 4  # dense weight + gradient + momentum
    index_bytes = sum(value_bytes(b) for b in module.buffers())
    assert trained <= 1.5 * density * dense_bytes + index_bytes
    assert module.weight.numel() == module.nnz
