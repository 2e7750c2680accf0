"""`_native_pooled_mm`: a @ b (+ bias) written into an output of the CPU output pool. The masked
layout's large-batch GEMMs use it (a fresh 64 MB dW page-faults on every step)."""

import pytest
import torch

SHAPES = [(1, 1, 1), (3, 5, 7), (64, 33, 17), (512, 300, 600), (0, 4, 3), (4, 0, 3), (4, 3, 0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_pooled_mm_matches_torch_mm(shape, dtype, seed):
    n, k, m = shape
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, k, generator=g).to(dtype)
    b = torch.randn(k, m, generator=g).to(dtype)
    bias = torch.randn(m, generator=g).to(dtype)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(torch.ops.granet._native_pooled_mm(a, b), a @ b, **tol)
    torch.testing.assert_close(torch.ops.granet._native_pooled_mm(a, b, bias), torch.addmm(bias, a, b), **tol)


def test_pooled_mm_takes_transposed_operands_and_returns_an_ordinary_tensor(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(700, 600, generator=g)  # above the pool's 1 MB threshold: a pooled block
    b = torch.randn(900, 700, generator=g)
    out = torch.ops.granet._native_pooled_mm(a.t(), b.t())
    torch.testing.assert_close(out, a.t() @ b.t())
    assert out.is_contiguous() and out.shape == (600, 900)
    out.add_(1).resize_(10, 10)  # writable, resizable like any CPU tensor
    del out
    again = torch.ops.granet._native_pooled_mm(a.t(), b.t())  # may reuse the freed block
    torch.testing.assert_close(again, a.t() @ b.t())


@pytest.mark.parametrize(
    "a, b, bias, pattern",
    [
        (torch.ones(2, 3, 4), torch.ones(3, 4), None, "must be 2-D"),
        (torch.ones(2, 3), torch.ones(4, 5), None, r"a.shape\[1\] must be b.shape\[0\] = 4, got 3"),
        (torch.ones(2, 3), torch.ones(3, 5, dtype=torch.float64), None, "share one floating-point dtype"),
        (torch.ones(2, 3, dtype=torch.int32), torch.ones(3, 5, dtype=torch.int32), None, "floating-point"),
        (torch.ones(2, 3), torch.ones(3, 5), torch.ones(4), "bias must be a 1-D"),
        (torch.ones(2, 3), torch.ones(3, 5), torch.ones(5, dtype=torch.float64), "bias must be a 1-D"),
    ],
)
def test_pooled_mm_rejects_bad_input(a, b, bias, pattern):
    with pytest.raises(ValueError, match=pattern):
        torch.ops.granet._native_pooled_mm(a, b, bias)
