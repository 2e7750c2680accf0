"""Triton masked matmul (forward, dx, dw) against fp64 torch references.

Without a GPU the kernels run on CPU tensors through the Triton interpreter, which must be switched
on before the module defines its kernels; bf16 is only checked on a GPU because the interpreter's
bf16 arithmetic is wrong.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")
import granet_kernels.triton.masked_matmul as mm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(1, 1, 1), (1, 37, 19), (33, 65, 17), (64, 64, 64), (70, 130, 45)]  # (N, M, K)
DENSITIES = [0.05, 0.3, 1.0]
REL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype)


def rand_mask(m, k, density):
    return torch.rand(m, k, device=DEVICE) < density


def assert_close(out, ref, bound, rel):
    """|out - ref| <= rel * (|a| @ |b| + |bias|): a bound that grows with K like rounding does."""
    assert out.shape == ref.shape
    err = (out.double() - ref).abs()
    worst = (err - rel * bound - 1e-30).max().item() if err.numel() else 0.0
    assert worst <= 0, f"max err {err.max().item():.3e} exceeds {rel:.0e} * bound"


def ref_forward(x, w, mask, bias):
    wm = w.double() * mask
    ref = x.double() @ wm.T
    bound = x.double().abs() @ wm.abs().T
    if bias is not None:
        ref, bound = ref + bias.double(), bound + bias.double().abs()
    return ref, bound


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_forward(shape, density, with_bias):
    n, m, k = shape
    x, w, mask = rand(n, k), rand(m, k), rand_mask(m, k, density)
    bias = rand(m) if with_bias else None
    out = mm.masked_matmul(x, w, mask, bias)
    assert out.dtype == x.dtype
    assert_close(out, *ref_forward(x, w, mask, bias), REL[torch.float32])


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", SHAPES)
def test_dx(shape, density):
    n, m, k = shape
    dy, w, mask = rand(n, m), rand(m, k), rand_mask(m, k, density)
    wm = w.double() * mask
    out = mm.masked_matmul_dx(dy, w, mask)
    assert_close(out, dy.double() @ wm, dy.double().abs() @ wm.abs(), REL[torch.float32])


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", SHAPES)
def test_dw(shape, density):
    n, m, k = shape
    dy, x, mask = rand(n, m), rand(n, k), rand_mask(m, k, density)
    out = mm.masked_matmul_dw(dy, x, mask)
    ref = (dy.double().T @ x.double()) * mask
    assert_close(out, ref, dy.double().abs().T @ x.double().abs(), REL[torch.float32])
    assert (out[~mask] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(33, 65, 17), (70, 130, 45)])
def test_low_precision(shape, dtype):
    n, m, k = shape
    x, w, dy = rand(n, k, dtype=dtype), rand(m, k, dtype=dtype), rand(n, m, dtype=dtype)
    mask, bias = rand_mask(m, k, 0.3), rand(m, dtype=dtype)
    wm = w.double() * mask
    out = mm.masked_matmul(x, w, mask, bias)
    assert out.dtype == dtype
    assert_close(out, *ref_forward(x, w, mask, bias), REL[dtype])
    assert_close(mm.masked_matmul_dx(dy, w, mask), dy.double() @ wm, dy.double().abs() @ wm.abs(), REL[dtype])
    assert_close(mm.masked_matmul_dw(dy, x, mask), (dy.double().T @ x.double()) * mask,
                 dy.double().abs().T @ x.double().abs(), REL[dtype])


def test_non_contiguous():
    n, m, k = 33, 65, 47
    x, w = rand(k, n).T, rand(k, m).T  # transposed views
    mask = rand_mask(k, m, 0.3).T
    bias = rand(2 * m)[::2]
    dy = rand(m, n).T
    assert not (x.is_contiguous() or w.is_contiguous() or mask.is_contiguous() or dy.is_contiguous())
    wm = w.double() * mask
    assert_close(mm.masked_matmul(x, w, mask, bias), *ref_forward(x, w, mask, bias), 1e-5)
    assert_close(mm.masked_matmul_dx(dy, w, mask), dy.double() @ wm, dy.double().abs() @ wm.abs(), 1e-5)
    assert_close(mm.masked_matmul_dw(dy, x, mask), (dy.double().T @ x.double()) * mask,
                 dy.double().abs().T @ x.double().abs(), 1e-5)


@pytest.mark.parametrize("with_bias", [False, True])
def test_all_false_mask(with_bias):
    n, m, k = 17, 40, 50
    x, w, dy = rand(n, k), rand(m, k), rand(n, m)
    mask = torch.zeros(m, k, dtype=torch.bool, device=DEVICE)
    bias = rand(m) if with_bias else None
    expected = bias.expand(n, m) if with_bias else torch.zeros(n, m, device=DEVICE)
    assert torch.equal(mm.masked_matmul(x, w, mask, bias), expected)
    assert torch.equal(mm.masked_matmul_dx(dy, w, mask), torch.zeros(n, k, device=DEVICE))
    assert torch.equal(mm.masked_matmul_dw(dy, x, mask), torch.zeros(m, k, device=DEVICE))


def one_tile_case():
    """Mask whose only occupied tile is (m tile 1, k tile 0), with NaN where only skipped tiles
    read: x in k tile 1 (forward), dy in m tiles 0 and 2 (dx). Any skipped tile that is computed
    anyway turns its output NaN, since NaN * 0 = NaN."""
    bm, bk = mm.BLOCK_M, mm.BLOCK_K
    n, m, k = 8, 2 * bm + 3, bk + 5
    mask = torch.zeros(m, k, dtype=torch.bool, device=DEVICE)
    mask[bm:2 * bm, :bk] = rand_mask(bm, bk, 0.5)
    mask[bm, 0] = True
    x, w, dy = rand(n, k), rand(m, k), rand(n, m)
    x[:, bk:] = float("nan")
    dy[:, :bm] = float("nan")
    dy[:, 2 * bm:] = float("nan")
    return x, w, dy, mask


def test_empty_tiles_are_skipped():
    x, w, dy, mask = one_tile_case()
    occ = mm.tile_occupancy(mask)
    assert occ.sum().item() == 1 and occ[1, 0].item() == 1
    bm, bk = mm.BLOCK_M, mm.BLOCK_K
    wm = w.double() * mask
    y = mm.masked_matmul(x, w, mask, occupancy=occ)
    assert torch.isfinite(y).all()
    xk = x[:, :bk].double()
    assert_close(y, xk @ wm[:, :bk].T, xk.abs() @ wm[:, :bk].abs().T, 1e-5)
    dx = mm.masked_matmul_dx(dy, w, mask, occupancy=occ)
    assert torch.isfinite(dx).all()
    dym = dy[:, bm:2 * bm].double()
    assert_close(dx, dym @ wm[bm:2 * bm], dym.abs() @ wm[bm:2 * bm].abs(), 1e-5)


def test_occupancy_is_obeyed():
    """A zero occupancy map must skip everything even under a dense mask: proof the kernels use it."""
    n, m, k = 9, 70, 45
    x, w, dy, bias = rand(n, k), rand(m, k), rand(n, m), rand(m)
    mask = torch.ones(m, k, dtype=torch.bool, device=DEVICE)
    zero = torch.zeros_like(mm.tile_occupancy(mask))
    assert torch.equal(mm.masked_matmul(x, w, mask, bias, occupancy=zero), bias.expand(n, m))
    assert (mm.masked_matmul_dx(dy, w, mask, occupancy=zero) == 0).all()
    assert (mm.masked_matmul_dw(dy, x, mask, occupancy=zero) == 0).all()


def test_tile_occupancy():
    mask = torch.zeros(70, 45, dtype=torch.bool, device=DEVICE)
    mask[3, 44] = mask[69, 0] = mask[40, 20] = True
    occ = mm.tile_occupancy(mask, 32, 16)
    assert occ.shape == (3, 3)
    expected = torch.zeros(3, 3, dtype=occ.dtype, device=DEVICE)
    expected[0, 2] = expected[2, 0] = expected[1, 1] = 1
    assert torch.equal(occ, expected)
    assert mm.tile_occupancy(torch.ones(0, 5, dtype=torch.bool), 32, 32).shape == (0, 1)
    with pytest.raises(ValueError):
        mm.masked_matmul(rand(2, 45), rand(70, 45), mask, occupancy=occ)


def test_rejects_unsupported_dtypes():
    mask = rand_mask(8, 8, 0.5)
    with pytest.raises(TypeError):
        mm.masked_matmul(rand(2, 8, dtype=torch.float64), rand(8, 8, dtype=torch.float64), mask)
    with pytest.raises(TypeError):
        mm.masked_matmul(rand(2, 8), rand(8, 8, dtype=torch.float16), mask)
    with pytest.raises(TypeError):
        mm.masked_matmul(rand(2, 8), rand(8, 8), mask.float())


def test_empty_batch():
    m, k = 40, 50
    w, mask, bias = rand(m, k), rand_mask(m, k, 0.3), rand(m)
    assert mm.masked_matmul(rand(0, k), w, mask, bias).shape == (0, m)
    assert mm.masked_matmul_dx(rand(0, m), w, mask).shape == (0, k)
    assert torch.equal(mm.masked_matmul_dw(rand(0, m), rand(0, k), mask), torch.zeros(m, k, device=DEVICE))


@pytest.mark.skipif(DEVICE == "cuda", reason="the other tests compile the kernels for this GPU")
def test_compiles_for_gpu():
    """The interpreter accepts code the GPU compiler rejects; compile for sm_80/sm_90 without one."""
    pytest.importorskip("triton.backends.nvidia")
    script = textwrap.dedent("""
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        import granet_kernels.triton.masked_matmul as mm
        kern = mm._masked_mm_kernel
        flags = ("MASK_OUT", "HAS_BIAS", "PRECISION", "BLOCK_P", "BLOCK_Q", "BLOCK_R", "GROUP")
        for arch, dt, prec in [(80, "bf16", "ieee"), (90, "fp32", "tf32"), (90, "fp16", "ieee")]:
            for mask_out in (False, True):
                sig = {n: "constexpr" if n in flags else
                       {"mask_ptr": "*u8", "tiles_ptr": "*i32", "count_ptr": "*i32"}.get(n, "*" + dt)
                       if n.endswith("_ptr") else "i32" for n in kern.arg_names}
                consts = dict(MASK_OUT=mask_out, HAS_BIAS=not mask_out, PRECISION=prec, GROUP=8,
                              BLOCK_P=64, BLOCK_Q=64, BLOCK_R=64)
                triton.compile(ASTSource(kern, sig, constexprs=consts), target=GPUTarget("cuda", arch, 32),
                               options=dict(num_warps=4, num_stages=3))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
