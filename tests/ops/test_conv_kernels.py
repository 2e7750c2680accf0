"""The native CPU kernels of the sparse conv2d ops (forward, dX, dW, fused backward) against the
pure-torch references, on awkward shapes: batch 1 and batches that are not a multiple of the SIMD
lane count, channels that are not multiples of 16, H != W, stride 2 and 3, padding 0/1/2 (and more
padding than kernel), dilation 2, kernels 1x1 / 3x3 / 5x3, densities 0 to 1, empty filter rows.
Plus gradcheck through torch.ops.granet.sparse_conv2d on the cpu backend, the autograd wiring of the
fused backward, and bad inputs to the native entry points."""

from __future__ import annotations

import itertools

import pytest
import torch

import granet_kernels
from granet_kernels import ops
from granet_kernels.ops import reference
from granet_kernels.ops.conv import output_size
from granet_kernels.ops.samples import random_csr

# (N, C_in, C_out, H, W, kernel, stride, padding, dilation)
SHAPES = [
    (1, 1, 1, 1, 1, (1, 1), (1, 1), (0, 0), (1, 1)),
    (1, 3, 5, 7, 6, (3, 3), (1, 1), (1, 1), (1, 1)),
    (17, 5, 7, 14, 14, (3, 3), (1, 1), (1, 1), (1, 1)),  # 17 = 2 lanes-blocks + 1 (any ISA)
    (3, 4, 6, 9, 11, (3, 2), (2, 1), (0, 2), (2, 1)),
    (2, 6, 5, 8, 13, (5, 3), (2, 2), (2, 1), (1, 2)),
    (9, 20, 19, 4, 4, (3, 3), (1, 1), (1, 1), (1, 1)),  # small planes: flattened tiles
    (9, 20, 19, 2, 2, (3, 3), (1, 1), (1, 1), (1, 1)),
    (5, 18, 21, 13, 10, (1, 1), (2, 2), (0, 0), (1, 1)),  # 1x1 stride 2 (downsampling)
    (4, 20, 19, 30, 31, (3, 3), (1, 1), (1, 1), (1, 1)),  # several tiles per row
    (5, 7, 9, 8, 8, (3, 3), (3, 2), (4, 0), (1, 3)),  # padding > kernel extent, stride 3
    (2, 9, 11, 12, 7, (3, 3), (1, 1), (2, 2), (2, 2)),  # dilation 2
    (3, 33, 17, 5, 9, (5, 3), (1, 1), (2, 1), (1, 1)),
    (16, 40, 24, 14, 14, (3, 3), (1, 1), (1, 1), (1, 1)),  # many channel blocks
    # 1x1, stride 1, no padding: pixel lanes on the NCHW tensors (planes with and without a tail vector)
    (17, 9, 7, 14, 14, (1, 1), (1, 1), (0, 0), (1, 1)),
    (3, 5, 6, 4, 8, (1, 1), (1, 1), (0, 0), (1, 1)),
    (2, 70, 3, 7, 7, (1, 1), (1, 1), (0, 0), (2, 2)),
    (4, 3, 5, 2, 2, (1, 1), (1, 1), (0, 0), (1, 1)),
    (1, 2, 2, 1, 9, (1, 1), (1, 1), (0, 0), (1, 1)),
    # small batches with stride 1 take pixel lanes over zero-padded planes
    (1, 4, 3, 3, 17, (3, 5), (1, 1), (0, 2), (1, 1)),  # asymmetric kernel and padding
    (2, 3, 4, 9, 9, (3, 3), (1, 1), (3, 0), (1, 1)),  # padding past the taps' reach (dX: batch lanes)
    (1, 5, 4, 1, 12, (1, 3), (1, 1), (0, 1), (1, 2)),  # one row, dilated
    (3, 6, 7, 2, 3, (2, 2), (1, 1), (0, 0), (1, 1)),  # a tile space smaller than one vector
    (1, 40, 24, 14, 14, (3, 3), (1, 1), (1, 1), (1, 1)),  # many channel blocks
]
DENSITIES = [0.0, 0.05, 0.3, 1.0]
DTYPES = [torch.float64, torch.float32]
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _max_rel_err(out, ref):
    if ref.numel() == 0:
        return 0.0
    ref = ref.double()
    return float((out.double() - ref).abs().max()) / max(1.0, float(ref.abs().max()))


def _case(shape, density, dtype, seed, empty_rows=0):
    n, cin, cout, h, w, ks, st, pad, dil = shape
    gen = torch.Generator().manual_seed(seed)
    crow, col, values = random_csr(cout, cin * ks[0] * ks[1], density, gen=gen, dtype=dtype, empty_rows=empty_rows)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=torch.float64).to(dtype)
    oh, ow = (output_size(s, ks[i], st[i], pad[i], dil[i]) for i, s in enumerate((h, w)))
    g = torch.randn(n, cout, oh, ow, generator=gen, dtype=torch.float64).to(dtype)
    bias = torch.randn(cout, generator=gen, dtype=torch.float64).to(dtype)
    geometry = (list(ks), list(st), list(pad), list(dil))
    return x, g, crow, col, values, bias, geometry


def _f64(*ts):
    return [t.double() if t.is_floating_point() else t for t in ts]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])) + f"-k{s[5][0]}{s[5][1]}s{s[6][0]}{s[6][1]}p{s[7][0]}{s[7][1]}d{s[8][0]}{s[8][1]}")
def test_conv_ops_match_reference(shape, density, dtype):
    seed = hash((shape, density)) & 0xFFFF
    x, g, crow, col, values, bias, geo = _case(shape, density, dtype, seed, empty_rows=1 if shape[2] > 2 else 0)
    x64, g64, v64, b64 = _f64(x, g, values, bias)
    tol = RTOL[dtype]
    with granet_kernels.backend("cpu"):
        y = ops.sparse_conv2d(x, crow, col, values, *geo, bias=bias)
        y_nobias = ops.sparse_conv2d(x, crow, col, values, *geo)
        dx = ops.sparse_conv2d_dx(g, crow, col, values, list(x.shape), *geo)
        dw = ops.sparse_conv2d_dw(g, x, crow, col, *geo)
        dx2, dw2 = ops.sparse_conv2d_backward(g, x, crow, col, values, *geo)
    ref_y = reference.sparse_conv2d(x64, crow, col, v64, *geo, b64)
    ref_y0 = reference.sparse_conv2d(x64, crow, col, v64, *geo)
    ref_dx = reference.sparse_conv2d_dx(g64, crow, col, v64, list(x.shape), *geo)
    ref_dw = reference.sparse_conv2d_dw(g64, x64, crow, col, *geo)
    for name, out, ref in [("forward", y, ref_y), ("forward (no bias)", y_nobias, ref_y0), ("dx", dx, ref_dx),
                           ("dw", dw, ref_dw), ("backward dx", dx2, ref_dx), ("backward dw", dw2, ref_dw)]:
        assert out.dtype == dtype and out.shape == ref.shape, f"{name}: {out.dtype} {tuple(out.shape)}"
        err = _max_rel_err(out, ref)
        assert err < tol, f"{name}: relative error {err:.3g} (tolerance {tol})"


def test_fused_backward_equals_separate_ops():
    """The fused pass and the two separate kernels compute the same numbers (up to summation order)."""
    x, g, crow, col, values, _, geo = _case((17, 24, 20, 14, 14, (3, 3), (1, 1), (1, 1), (1, 1)), 0.2, torch.float32, 5)
    with granet_kernels.backend("cpu"):
        dx, dw = ops.sparse_conv2d_backward(g, x, crow, col, values, *geo)
        torch.testing.assert_close(dx, ops.sparse_conv2d_dx(g, crow, col, values, list(x.shape), *geo), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dw, ops.sparse_conv2d_dw(g, x, crow, col, *geo), rtol=1e-5, atol=1e-4)


def test_unsorted_columns_and_noncontiguous_input():
    """Column indices in any order within a row, and a non-contiguous input tensor."""
    x, g, crow, col, values, bias, geo = _case((3, 6, 5, 9, 8, (3, 3), (1, 1), (1, 1), (1, 1)), 0.4, torch.float64, 11)
    perm_col, perm_val = col.clone(), values.clone()
    for r in range(crow.numel() - 1):
        a, b = int(crow[r]), int(crow[r + 1])
        p = torch.randperm(b - a, generator=torch.Generator().manual_seed(r)) + a
        perm_col[a:b], perm_val[a:b] = col[p], values[p]
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert not xt.is_contiguous()
    with granet_kernels.backend("cpu"):
        y = ops.sparse_conv2d(xt, crow, perm_col, perm_val, *geo, bias=bias)
        dx, dw = ops.sparse_conv2d_backward(g, xt, crow, perm_col, perm_val, *geo)
    torch.testing.assert_close(y, reference.sparse_conv2d(x, crow, col, values, *geo, bias), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dx, reference.sparse_conv2d_dx(g, crow, col, values, list(x.shape), *geo), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dw, reference.sparse_conv2d_dw(g, x, crow, perm_col, *geo), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("batch", [1, 33, 64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_give_the_same_result(threads, batch):
    """Work split by batch block and (for small batches) by channel ranges; per-thread dW sums."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        x, g, crow, col, values, bias, geo = _case((batch, 16, 24, 10, 9, (3, 3), (2, 1), (1, 1), (1, 1)), 0.2, torch.float64, 3)
        with granet_kernels.backend("cpu"):
            y = ops.sparse_conv2d(x, crow, col, values, *geo, bias=bias)
            dx, dw = ops.sparse_conv2d_backward(g, x, crow, col, values, *geo)
        torch.testing.assert_close(y, reference.sparse_conv2d(x, crow, col, values, *geo, bias), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(dx, reference.sparse_conv2d_dx(g, crow, col, values, list(x.shape), *geo), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(dw, reference.sparse_conv2d_dw(g, x, crow, col, *geo), rtol=1e-10, atol=1e-10)
    finally:
        torch.set_num_threads(before)


GRADCHECK_SHAPES = [
    (2, 3, 4, 5, 4, (3, 3), (1, 1), (1, 1), (1, 1)),
    (1, 2, 3, 6, 5, (3, 2), (2, 1), (0, 1), (1, 2)),
    (3, 2, 2, 3, 3, (1, 1), (1, 1), (0, 0), (1, 1)),
]


@pytest.mark.parametrize("shape", GRADCHECK_SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
def test_gradcheck_cpu_backend(shape):
    x, _, crow, col, values, bias, geo = _case(shape, 0.6, torch.float64, 7)
    x, values, bias = (t.clone().requires_grad_() for t in (x, values, bias))

    def fn(x, values, bias):
        return torch.ops.granet.sparse_conv2d(x, crow, col, values, *geo, bias)

    with granet_kernels.backend("cpu"):
        assert torch.autograd.gradcheck(fn, (x, values, bias))


def test_autograd_uses_the_fused_backward(monkeypatch):
    """Both gradients needed: one sparse_conv2d_backward call; one of them: the single op."""
    from granet_kernels.ops import OPS, Kernel

    x, _, crow, col, values, _, geo = _case((4, 5, 6, 7, 7, (3, 3), (1, 1), (1, 1), (1, 1)), 0.3, torch.float64, 9)
    calls = []
    for name in ("sparse_conv2d_dx", "sparse_conv2d_dw", "sparse_conv2d_backward"):
        kernel = OPS[name].kernels["cpu"]

        def counting(*args, _name=name, _fn=kernel.fn):
            calls.append(_name)
            return _fn(*args)

        monkeypatch.setitem(OPS[name].kernels, "cpu", Kernel(counting, kernel.dtypes))

    def grads(need_x, need_v):
        xl, vl = x.clone().requires_grad_(need_x), values.clone().requires_grad_(need_v)
        with granet_kernels.backend("cpu"):
            out = torch.ops.granet.sparse_conv2d(xl, crow, col, vl, *geo, None)
            calls.clear()
            out.sum().backward()
        return xl.grad, vl.grad, list(calls)

    gx, gv, both = grads(True, True)
    assert both == ["sparse_conv2d_backward"], both
    gx1, _, only_x = grads(True, False)
    assert only_x == ["sparse_conv2d_dx"], only_x
    _, gv1, only_v = grads(False, True)
    assert only_v == ["sparse_conv2d_dw"], only_v
    torch.testing.assert_close(gx, gx1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gv, gv1, rtol=1e-12, atol=1e-12)


# --- bad inputs: the public ops (Python checks) and the native entry points (C++ checks) ---------

def _bad_setup():
    x, g, crow, col, values, bias, geo = _case((2, 3, 4, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1)), 0.5, torch.float32, 1)
    return x, g, crow, col, values, bias, geo


def test_out_of_range_column_raises():
    x, g, crow, col, values, bias, geo = _bad_setup()
    bad = col.clone()
    bad[0] = 3 * 9  # C_in * kh * kw: one past the end
    calls = {
        "sparse_conv2d": lambda: ops.sparse_conv2d(x, crow, bad, values, *geo),
        "sparse_conv2d_dx": lambda: ops.sparse_conv2d_dx(g, crow, bad, values, list(x.shape), *geo),
        "sparse_conv2d_dw": lambda: ops.sparse_conv2d_dw(g, x, crow, bad, *geo),
        "sparse_conv2d_backward": lambda: ops.sparse_conv2d_backward(g, x, crow, bad, values, *geo),
    }
    native = {
        "sparse_conv2d": lambda: torch.ops.granet._native_sparse_conv2d(x, crow, bad, values, *geo, None),
        "sparse_conv2d_dx": lambda: torch.ops.granet._native_sparse_conv2d_dx(g, crow, bad, values, list(x.shape), *geo),
        "sparse_conv2d_dw": lambda: torch.ops.granet._native_sparse_conv2d_dw(g, x, crow, bad, *geo),
        "sparse_conv2d_backward": lambda: torch.ops.granet._native_sparse_conv2d_backward(g, x, crow, bad, values, *geo),
    }
    for name, fn in calls.items():
        with granet_kernels.backend("cpu"), pytest.raises(IndexError, match=r"col_indices"):
            fn()
    for name, fn in native.items():
        with pytest.raises(IndexError, match=rf"granet::{name}: col_indices\[0\] = 27 is out of range \[0, 27\)"):
            fn()
    negative = col.clone()
    negative[-1] = -1
    with pytest.raises(IndexError, match=r"col_indices\[\d+\] = -1 is out of range"):
        torch.ops.granet._native_sparse_conv2d(x, crow, negative, values, *geo, None)


def test_wrong_grad_output_shape_raises():
    x, g, crow, col, values, bias, geo = _bad_setup()
    for bad in (g[:, :, :4], g[:, :3], g[:1], g[0]):
        with granet_kernels.backend("cpu"), pytest.raises(ValueError, match=r"grad_output must (have shape|be 4-D)"):
            ops.sparse_conv2d_backward(bad, x, crow, col, values, *geo)
        with pytest.raises(ValueError, match=r"granet::sparse_conv2d_backward: grad_output must (have shape|be 4-D)"):
            torch.ops.granet._native_sparse_conv2d_backward(bad, x, crow, col, values, *geo)
        with pytest.raises(ValueError, match=r"granet::sparse_conv2d_dx: grad_output must (have shape|be 4-D)"):
            torch.ops.granet._native_sparse_conv2d_dx(bad, crow, col, values, list(x.shape), *geo)
        with pytest.raises(ValueError, match=r"granet::sparse_conv2d_dw: grad_output must (have shape|be 4-D)"):
            torch.ops.granet._native_sparse_conv2d_dw(bad, x, crow, col, *geo)


@pytest.mark.parametrize(
    "case,pattern",
    [
        ("crow-not-from-0", r"crow_indices\[0\] must be 0"),
        ("crow-decreasing", r"crow_indices must be non-decreasing"),
        ("crow-int64", r"crow_indices must be int32"),
        ("values-length", r"values must be 1-D with as many entries as col_indices"),
        ("values-fp64", r"values dtype .* does not match"),
        ("bias-length", r"bias must be 1-D with 4 entries"),
        ("input-3d", r"input must be 4-D"),
        ("input-int", r"input must be float32 or float64"),
        ("stride-0", r"stride must be 2 integers >= 1"),
        ("kernel-3-ints", r"kernel_size must be 2 integers"),
        ("padding-negative", r"padding must be 2 integers >= 0"),
        ("too-small", r"input of spatial size \(5, 5\) is too small"),
    ],
)
def test_native_forward_rejects_bad_input(case, pattern):
    x, g, crow, col, values, bias, geo = _bad_setup()
    ks, st, pad, dil = geo
    args = dict(x=x, crow=crow, col=col, values=values, ks=ks, st=st, pad=pad, dil=dil, bias=bias)
    if case == "crow-not-from-0":
        args["crow"] = crow + 1
    elif case == "crow-decreasing":
        c = crow.clone()
        c[1] = c[-1] + 1
        args["crow"] = c
    elif case == "crow-int64":
        args["crow"] = crow.long()
    elif case == "values-length":
        args["values"] = values[:-1]
    elif case == "values-fp64":
        args["values"] = values.double()
    elif case == "bias-length":
        args["bias"] = bias[:-1]
    elif case == "input-3d":
        args["x"] = x[0]
    elif case == "input-int":
        args["x"] = x.to(torch.int32)
    elif case == "stride-0":
        args["st"] = [0, 1]
    elif case == "kernel-3-ints":
        args["ks"] = [3, 3, 3]
    elif case == "padding-negative":
        args["pad"] = [-1, 0]
    elif case == "too-small":
        args["ks"], args["pad"] = [7, 7], [0, 0]
    with pytest.raises((ValueError, IndexError), match=pattern):
        torch.ops.granet._native_sparse_conv2d(
            args["x"], args["crow"], args["col"], args["values"], args["ks"], args["st"], args["pad"], args["dil"], args["bias"]
        )


def test_dtype_support_of_the_cpu_backend():
    x, g, crow, col, values, bias, geo = _bad_setup()
    from granet_kernels.backends import BackendUnavailableError

    with granet_kernels.backend("cpu"), pytest.raises(BackendUnavailableError, match="sparse_conv2d"):
        ops.sparse_conv2d(x.half(), crow, col, values.half(), *geo)


def test_every_flattened_tap_order():
    """One nonzero per kernel tap: each (c_in, r, s) lands where torch's weight flattening says."""
    cin, kh, kw = 2, 3, 2
    x = torch.randn(3, cin, 6, 5, dtype=torch.float64)
    g = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    for c in range(cin * kh * kw):
        crow = torch.tensor([0, 1], dtype=torch.int32)
        col = torch.tensor([c], dtype=torch.int32)
        values = torch.tensor([1.5], dtype=torch.float64)
        geo = ([kh, kw], [1, 1], [1, 1], [1, 1])
        with granet_kernels.backend("cpu"):
            y = ops.sparse_conv2d(x, crow, col, values, *geo)
            dx, dw = ops.sparse_conv2d_backward(g, x, crow, col, values, *geo)
        torch.testing.assert_close(y, reference.sparse_conv2d(x, crow, col, values, *geo), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dx, reference.sparse_conv2d_dx(g, crow, col, values, list(x.shape), *geo), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dw, reference.sparse_conv2d_dw(g, x, crow, col, *geo), rtol=1e-12, atol=1e-12)


def test_generic_isa_matches(tmp_path):
    """The generic (SSE) copy of the kernels, chosen with GRANET_CPU_ISA=generic in a subprocess."""
    import os
    import subprocess
    import sys

    code = (
        "import torch, granet_kernels\n"
        "from granet_kernels import ops\n"
        "from granet_kernels.ops import reference\n"
        "assert granet_kernels._native.cpu_isa() == 'generic', granet_kernels._native.cpu_isa()\n"
        "from granet_kernels.ops.samples import random_csr\n"
        "gen = torch.Generator().manual_seed(0)\n"
        "for dt in (torch.float32, torch.float64):\n"
        "  for (n, ci, co, h, w, st, k) in ((5, 6, 7, 9, 8, 1, 3), (3, 4, 5, 7, 7, 2, 3), (9, 5, 3, 3, 3, 1, 3),\n"
        "                                  (5, 6, 7, 7, 7, 1, 1), (3, 4, 5, 2, 4, 1, 1)):\n"
        "    crow, col, v = random_csr(co, ci * k * k, 0.3, gen=gen, dtype=dt)\n"
        "    x = torch.randn(n, ci, h, w, dtype=dt)\n"
        "    geo = ([k, k], [st, st], [k // 2, k // 2], [1, 1])\n"
        "    y = ops.sparse_conv2d(x, crow, col, v, *geo)\n"
        "    g = torch.randn(y.shape, dtype=dt)\n"
        "    dx, dw = ops.sparse_conv2d_backward(g, x, crow, col, v, *geo)\n"
        "    tol = 1e-5 if dt == torch.float32 else 1e-10\n"
        "    torch.testing.assert_close(y.double(), reference.sparse_conv2d(x.double(), crow, col, v.double(), *geo), rtol=tol, atol=tol)\n"
        "    torch.testing.assert_close(dx.double(), reference.sparse_conv2d_dx(g.double(), crow, col, v.double(), list(x.shape), *geo), rtol=tol, atol=tol)\n"
        "    torch.testing.assert_close(dw.double(), reference.sparse_conv2d_dw(g.double(), x.double(), crow, col, *geo), rtol=tol, atol=10 * tol)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, GRANET_CPU_ISA="generic")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr
