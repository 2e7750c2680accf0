"""The native CPU BSR kernels (bsr_spmm, bsr_spmm_t, bsr_sddmm) against the pure-torch references.

Block sizes 1..32 (the generic path and the vectorized fast paths), batch sizes around the panel
width (1, 5, 33, 64), empty patterns, full patterns, empty block rows, non-contiguous operands;
gradcheck of bsr_spmm through the cpu backend; bad inputs raise errors naming the argument, both
through the public ops and through the native ops directly.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

import granet_kernels
from granet_kernels import ops
from granet_kernels.ops import reference
from granet_kernels.ops._index import transpose_index
from granet_kernels.ops.samples import random_bsr
from granet_testing import assert_close_to_reference, seed_for

BLOCK_SIZES = [1, 2, 3, 4, 16, 32]
BATCHES = [1, 5, 33, 64]
DENSITIES = [0.0, 0.3, 1.0]
DTYPES = [torch.float32, torch.float64]


def _dense(shape, gen, dtype, noncontiguous=False):
    if noncontiguous:
        return torch.randn(shape[1], shape[0], generator=gen, dtype=torch.float64).to(dtype).t()
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _case(bs, n, density, dtype, seed, *, block_rows=3, block_cols=4, empty_rows=1, noncontiguous=False):
    gen = torch.Generator().manual_seed(seed)
    crow, col, values = random_bsr(block_rows, block_cols, bs, density, gen=gen, dtype=dtype, empty_rows=empty_rows)
    x = _dense((n, block_cols * bs), gen, dtype, noncontiguous)
    dy = _dense((n, block_rows * bs), gen, dtype, noncontiguous)
    return crow, col, values, x, dy


def _f64(t):
    return t.detach().to(torch.float64)


def _check(out, ref, dtype, msg):
    assert_close_to_reference(out, ref, dtype, msg)
    if dtype == torch.float32 and ref.numel():
        rel = float((out.double() - ref).abs().max()) / max(float(ref.abs().max()), 1e-30)
        assert rel < 1e-5, f"{msg}: relative error {rel:.2e}"


def _run_all(crow, col, values, x, dy, block_cols, msg):
    """The three products on the cpu backend, each against its reference on float64 copies."""
    dtype = values.dtype
    bs = values.shape[1]
    ccol, row, perm = transpose_index(crow, col, block_cols)
    with granet_kernels.backend("cpu"):
        y = ops.bsr_spmm(crow, col, values, x)
        dx = ops.bsr_spmm_t(ccol, row, perm, values, dy)
        dw = ops.bsr_sddmm(crow, col, dy, x, bs)
    _check(y, reference.bsr_spmm(crow, col, _f64(values), _f64(x)), dtype, f"{msg} bsr_spmm")
    _check(dx, reference.bsr_spmm_t(ccol, row, perm, _f64(values), _f64(dy)), dtype, f"{msg} bsr_spmm_t")
    _check(dw, reference.bsr_sddmm(crow, col, _f64(dy), _f64(x), bs), dtype, f"{msg} bsr_sddmm")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_against_reference(bs, n, density, dtype, request):
    noncontiguous = n in (5, 64)
    args = _case(bs, n, density, dtype, seed_for(request.node.nodeid), noncontiguous=noncontiguous)
    _run_all(*args, block_cols=4, msg=f"bs={bs} n={n} density={density}")


@pytest.mark.parametrize("bs", [5, 8, 12, 24, 48, 64])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_other_block_sizes(bs, dtype, request):
    """Block sizes around the vector widths (odd, multiples of 4 / 8 only) and the 64 fast path."""
    args = _case(bs, 37, 0.5, dtype, seed_for(request.node.nodeid), block_rows=4, block_cols=3)
    _run_all(*args, block_cols=3, msg=f"bs={bs}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_larger_shape(dtype, request):
    """Many block rows and panels: the threaded loops, long block rows, a batch tail."""
    args = _case(32, 100, 0.4, dtype, seed_for(request.node.nodeid), block_rows=12, block_cols=20, empty_rows=3)
    _run_all(*args, block_cols=20, msg="larger")


@pytest.mark.parametrize("bs", [1, 3, 16])
def test_empty_rows_columns_and_batch(bs):
    gen = torch.Generator().manual_seed(bs)
    # Only the middle block row has blocks; block column 0 is empty.
    crow = torch.tensor([0, 0, 2, 2, 2], dtype=torch.int32)
    col = torch.tensor([1, 3], dtype=torch.int32)
    values = torch.randn(2, bs, bs, generator=gen, dtype=torch.float64)
    for n in (1, 17):
        x = torch.randn(n, 4 * bs, generator=gen, dtype=torch.float64)
        dy = torch.randn(n, 4 * bs, generator=gen, dtype=torch.float64)
        _run_all(crow, col, values, x, dy, block_cols=4, msg=f"bs={bs} n={n}")
    # An empty batch (the reference's bsr_sddmm cannot reshape it: compared with zeros).
    x, dy = torch.zeros(0, 4 * bs, dtype=torch.float64), torch.zeros(0, 4 * bs, dtype=torch.float64)
    ccol, row, perm = transpose_index(crow, col, 4)
    with granet_kernels.backend("cpu"):
        assert ops.bsr_spmm(crow, col, values, x).shape == (0, 4 * bs)
        assert ops.bsr_spmm_t(ccol, row, perm, values, dy).shape == (0, 4 * bs)
        assert torch.equal(ops.bsr_sddmm(crow, col, dy, x, bs), torch.zeros(2, bs, bs, dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_no_blocks(dtype):
    """nnzb = 0: zero outputs of the right shapes (and an empty [0, bs, bs] gradient)."""
    crow = torch.zeros(4, dtype=torch.int32)
    col = torch.zeros(0, dtype=torch.int32)
    values = torch.zeros(0, 4, 4, dtype=dtype)
    x = torch.randn(9, 20, dtype=dtype)
    dy = torch.randn(9, 12, dtype=dtype)
    ccol, row, perm = transpose_index(crow, col, 5)
    with granet_kernels.backend("cpu"):
        y = ops.bsr_spmm(crow, col, values, x)
        dx = ops.bsr_spmm_t(ccol, row, perm, values, dy)
        dw = ops.bsr_sddmm(crow, col, dy, x, 4)
    assert torch.equal(y, torch.zeros(9, 12, dtype=dtype))
    assert torch.equal(dx, torch.zeros(9, 20, dtype=dtype))
    assert dw.shape == (0, 4, 4) and dw.dtype == dtype


def test_noncontiguous_values_and_duplicate_blocks():
    """values as a transposed view; a block position given twice (the products add both up)."""
    gen = torch.Generator().manual_seed(3)
    bs = 4
    crow = torch.tensor([0, 3, 4], dtype=torch.int32)
    col = torch.tensor([0, 2, 0, 1], dtype=torch.int32)
    values = torch.randn(4, bs, bs, generator=gen, dtype=torch.float64).transpose(1, 2)
    assert not values.is_contiguous()
    x = torch.randn(7, 3 * bs, generator=gen, dtype=torch.float64)
    dy = torch.randn(7, 2 * bs, generator=gen, dtype=torch.float64)
    _run_all(crow, col, values, x, dy, block_cols=3, msg="duplicates")


def test_auto_picks_cpu_kernel():
    crow, col, values, x, _ = _case(4, 3, 0.5, torch.float32, 0)
    assert ops.select_backend(ops.OPS["bsr_spmm"], (crow, col, values, x)) == "cpu"
    assert ops.select_backend(ops.OPS["bsr_spmm"], (crow, col, values.half(), x.half())) == "reference"


@pytest.mark.parametrize("bs", [2, 3])
def test_gradcheck(bs):
    gen = torch.Generator().manual_seed(bs)
    crow, col, values = random_bsr(3, 2, bs, 0.6, gen=gen, dtype=torch.float64, empty_rows=1)
    values = values.requires_grad_()
    x = torch.randn(5, 2 * bs, generator=gen, dtype=torch.float64, requires_grad=True)
    with granet_kernels.backend("cpu"):
        assert torch.autograd.gradcheck(lambda v, inp: ops.bsr_spmm(crow, col, v, inp), (values, x))


def test_backward_matches_reference():
    """Gradients of a float32 bsr_spmm through the cpu kernels vs autograd through the reference."""
    gen = torch.Generator().manual_seed(5)
    crow, col, values = random_bsr(4, 5, 16, 0.4, gen=gen, dtype=torch.float32, empty_rows=1)
    x = torch.randn(40, 80, generator=gen)
    dy = torch.randn(40, 64, generator=gen)
    v1, x1 = values.clone().requires_grad_(), x.clone().requires_grad_()
    with granet_kernels.backend("cpu"):
        ops.bsr_spmm(crow, col, v1, x1).backward(dy)
    v2, x2 = _f64(values).requires_grad_(), _f64(x).requires_grad_()
    reference.bsr_spmm(crow, col, v2, x2).backward(_f64(dy))
    _check(v1.grad, v2.grad, torch.float32, "dvalues")
    _check(x1.grad, x2.grad, torch.float32, "dx")


# --- bad inputs ------------------------------------------------------------------------------------

def _valid():
    gen = torch.Generator().manual_seed(1)
    crow = torch.tensor([0, 2, 3], dtype=torch.int32)
    col = torch.tensor([0, 1, 1], dtype=torch.int32)
    values = torch.randn(3, 2, 2, generator=gen)
    x = torch.randn(4, 4, generator=gen)
    dy = torch.randn(4, 4, generator=gen)
    return crow, col, values, x, dy


NATIVE = torch.ops.granet


@pytest.mark.parametrize("call", ["public", "native"])
def test_spmm_block_col_out_of_range(call):
    crow, col, values, x, _ = _valid()
    bad = col.clone()
    bad[2] = 2  # K = 4, bs = 2: block columns 0 and 1 only
    fn = ops.bsr_spmm if call == "public" else NATIVE._native_bsr_spmm
    with granet_kernels.backend("cpu"), pytest.raises(IndexError, match=r"col_indices.*2.*out of range \[0, 2\)"):
        fn(crow, bad, values, x)
    bad[2] = -1
    with granet_kernels.backend("cpu"), pytest.raises(IndexError, match=r"col_indices.*-1.*out of range"):
        fn(crow, bad, values, x)


@pytest.mark.parametrize("call", ["public", "native"])
@pytest.mark.parametrize(
    "values_shape, pattern",
    [
        ((3, 2, 3), r"values must hold square blocks"),
        ((2, 2, 2), r"values has 2 blocks but col_indices has 3"),
        ((3, 4), r"values must be 3-D"),
        ((3, 4, 4), r"col_indices.*out of range \[0, 1\)"),  # bs 4: x holds one block column
    ],
)
def test_spmm_wrong_values_shape(call, values_shape, pattern):
    crow, col, _, x, _ = _valid()
    values = torch.randn(*values_shape)
    fn = ops.bsr_spmm if call == "public" else NATIVE._native_bsr_spmm
    with granet_kernels.backend("cpu"), pytest.raises((ValueError, IndexError), match=pattern):
        fn(crow, col, values, x)


def test_native_spmm_checks():
    crow, col, values, x, _ = _valid()
    f = NATIVE._native_bsr_spmm
    with pytest.raises(ValueError, match=r"x\.shape\[1\] = 3 must be a multiple of the block size 2"):
        f(crow, col, values, x[:, :3])
    with pytest.raises(ValueError, match=r"values dtype .* does not match x dtype"):
        f(crow, col, values.double(), x)
    with pytest.raises(ValueError, match=r"\bx must be 2-D"):
        f(crow, col, values, x[0])
    with pytest.raises(ValueError, match=r"x must be float32 or float64"):
        f(crow, col, values.half(), x.half())
    with pytest.raises(ValueError, match=r"crow_indices must be non-decreasing"):
        f(torch.tensor([0, 4, 3], dtype=torch.int32), col, values, x)
    with pytest.raises(ValueError, match=r"crow_indices\[-1\] must equal len\(col_indices\)"):
        f(torch.tensor([0, 2, 2], dtype=torch.int32), col, values, x)
    with pytest.raises(ValueError, match=r"crow_indices must be int32"):
        f(crow.long(), col, values, x)
    with pytest.raises(ValueError, match=r"col_indices must be a 1-D int32 tensor"):
        f(crow, col.long(), values, x)


def test_native_spmm_t_checks():
    crow, col, values, _, dy = _valid()
    ccol, row, perm = transpose_index(crow, col, 2)
    f = NATIVE._native_bsr_spmm_t
    bad_perm = perm.clone()
    bad_perm[0] = 3
    with pytest.raises(IndexError, match=r"perm\[0\] = 3 is out of range \[0, 3\)"):
        f(ccol, row, bad_perm, values, dy)
    bad_row = row.clone()
    bad_row[0] = 2
    with pytest.raises(IndexError, match=r"row_indices\[0\] = 2 is out of range \[0, 2\)"):
        f(ccol, bad_row, perm, values, dy)
    with pytest.raises(ValueError, match=r"perm has 2 entries but row_indices has 3"):
        f(ccol, row, perm[:2], values, dy)
    with pytest.raises(ValueError, match=r"perm must be a 1-D int32 tensor"):
        f(ccol, row, perm.long(), values, dy)
    with pytest.raises(ValueError, match=r"values has 2 blocks but row_indices has 3"):
        f(ccol, row, perm, values[:2], dy)
    with pytest.raises(ValueError, match=r"dy\.shape\[1\] = 3 must be a multiple of the block size 2"):
        f(ccol, row, perm, values, dy[:, :3])


def test_native_sddmm_checks():
    crow, col, _, x, dy = _valid()
    f = NATIVE._native_bsr_sddmm
    with pytest.raises(ValueError, match=r"blocksize must be a positive integer, got 0"):
        f(crow, col, dy, x, 0)
    with pytest.raises(ValueError, match=r"dy\.shape\[1\] must be 6 \(block rows \* blocksize\)"):
        f(crow, col, dy, torch.randn(4, 6), 3)
    with pytest.raises(ValueError, match=r"dy\.shape\[0\] must be 4"):
        f(crow, col, dy[:3], x, 2)
    with pytest.raises(ValueError, match=r"dy dtype .* does not match x dtype"):
        f(crow, col, dy.double(), x, 2)
    bad = col.clone()
    bad[0] = 5
    with pytest.raises(IndexError, match=r"col_indices\[0\] = 5 is out of range \[0, 2\)"):
        f(crow, bad, dy, x, 2)


def test_public_ops_reject_before_the_kernel():
    crow, col, values, x, dy = _valid()
    ccol, row, perm = transpose_index(crow, col, 2)
    bad_perm = perm.clone()
    bad_perm[1] = -2
    with granet_kernels.backend("cpu"):
        with pytest.raises(IndexError, match=r"\bperm holds -2"):
            ops.bsr_spmm_t(ccol, row, bad_perm, values, dy)
        with pytest.raises(ValueError, match=r"\bblocksize must be a positive integer"):
            ops.bsr_sddmm(crow, col, dy, x, 0)


# --- the other instruction sets --------------------------------------------------------------------

_ISA_SCRIPT = r"""
import itertools, torch, granet_kernels
from granet_kernels import ops
from granet_kernels.ops import reference
from granet_kernels.ops._index import transpose_index
from granet_kernels.ops.samples import random_bsr
assert granet_kernels.build_info()["cpu_isa"] == "generic", granet_kernels.build_info()
gen = torch.Generator().manual_seed(0)
for bs, n, dtype in itertools.product([1, 3, 4, 8, 16, 32], [1, 9, 40], [torch.float32, torch.float64]):
    crow, col, values = random_bsr(3, 4, bs, 0.5, gen=gen, dtype=dtype, empty_rows=1)
    x = torch.randn(n, 4 * bs, generator=gen, dtype=dtype)
    dy = torch.randn(n, 3 * bs, generator=gen, dtype=dtype)
    ccol, row, perm = transpose_index(crow, col, 4)
    with granet_kernels.backend("cpu"):
        outs = (ops.bsr_spmm(crow, col, values, x), ops.bsr_spmm_t(ccol, row, perm, values, dy),
                ops.bsr_sddmm(crow, col, dy, x, bs))
    d = lambda t: t.double()
    refs = (reference.bsr_spmm(crow, col, d(values), d(x)), reference.bsr_spmm_t(ccol, row, perm, d(values), d(dy)),
            reference.bsr_sddmm(crow, col, d(dy), d(x), bs))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for o, r in zip(outs, refs):
        err = float((o.double() - r).abs().max()) / max(float(r.abs().max()), 1.0) if r.numel() else 0.0
        assert err < tol, (bs, n, dtype, err)
print("ok")
"""


def test_generic_isa_subprocess():
    """The kernels compiled for the baseline ISA (SSE vectors: other tile shapes and fallbacks)."""
    env = dict(os.environ, GRANET_CPU_ISA="generic", OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr
