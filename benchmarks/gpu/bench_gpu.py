"""GPU benchmark of SparseLinear (layouts masked / csr / bsr) against cuBLAS, cuSPARSE and torch BSR.

    PYTHONPATH=. python3 benchmarks/gpu/bench_gpu.py --out gpu_bench.json [--budget-s 300] [--quick]

What is timed (PERFORMANCE.md's protocol, on one CUDA device):
  * fwd:  y = layer(x) under no_grad;
  * step: y = layer(x); y.backward(dy) with x, weight and bias requiring grad (forward + dx + dW + db);
    gradients are set to None between runs, as an optimizer's zero_grad does.
Each time is the median over many runs timed with CUDA events, after warm-up runs (which also
trigger Triton's autotuning); the L2 cache is flushed (a 256 MB buffer overwritten) before every
run, so every run reads its operands from device memory.

Rows: the dense baseline nn.Linear (cuBLAS) at the same dtype; SparseLinear layouts "masked",
"csr", "bsr" (bsr on block masks of 32x32 blocks; the others on unstructured random masks, plus
"masked" on the block mask); the op granet.csr_spmm alone (the CUDA kernel, forward); peers:
torch.sparse CSR (cuSPARSE) forward and a forward + dx + dW step (dW by
torch.sparse.sampled_addmm), torch BSR forward. Which granet backend actually ran (cuda / triton /
reference) is recorded per row from the kernels called during one probe run.

Every row also records the forward's relative error ||y - ref|| / ||ref|| against a float64
reference on the same inputs (and, for the step, of dx and dW). One failing configuration records
its error string and the run goes on. The JSON is rewritten after every row, so a run killed at
its time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
import warnings

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import granet_kernels  # noqa: E402
from granet_kernels import SparseLinear  # noqa: E402
from granet_kernels.ops import OPS  # noqa: E402
from granet_kernels.ops._registry import Kernel  # noqa: E402

warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
DEV = torch.device("cuda")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# (name, out_features M, in_features K, batch N)
SHAPES = {
    "W4096x4096_N256": (4096, 4096, 256),
    "MLP4096to16384_N8192": (16384, 4096, 8192),
}
BLOCK = 32

# --- which backend ran ----------------------------------------------------------------------------

_RAN: set[str] | None = None


def install_recorders() -> None:
    """Wrap every registered kernel so that a probe run can see which (op, backend) ran."""
    for name, opdef in OPS.items():
        for backend_name, kernel in list(opdef.kernels.items()):
            def wrapped(*args, _fn=kernel.fn, _tag=f"{name}:{backend_name}"):
                if _RAN is not None:
                    _RAN.add(_tag)
                return _fn(*args)

            opdef.kernels[backend_name] = Kernel(wrapped, kernel.dtypes)


def probe(fn) -> list[str]:
    global _RAN
    _RAN = set()
    try:
        fn()
        torch.cuda.synchronize()
        return sorted(_RAN)
    finally:
        _RAN = None


# --- timing -----------------------------------------------------------------------------------

_FLUSH: torch.Tensor | None = None


def time_ms(fn, *, reset=(), target_ms: float = 150.0, min_runs: int = 5, max_runs: int = 100,
            warmup: int = 2) -> dict:
    """Median ms of fn() with CUDA events, L2 flushed before each run; `reset`: tensors whose .grad
    is set to None before each run (outside the timed region)."""
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(256 * 2**20, dtype=torch.int8, device=DEV)

    def prepare():
        for t in reset:
            t.grad = None
        _FLUSH.zero_()

    for _ in range(warmup):
        prepare()
        fn()
    torch.cuda.synchronize()
    # one timed run to size the loop
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    prepare()
    s.record()
    fn()
    e.record()
    torch.cuda.synchronize()
    est = max(s.elapsed_time(e), 1e-3)
    runs = int(min(max_runs, max(min_runs, target_ms / est)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for i in range(runs):
        prepare()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    times = sorted(a.elapsed_time(b) for a, b in zip(starts, ends))
    q = lambda p: times[min(len(times) - 1, int(p * len(times)))]  # noqa: E731
    return {"ms": statistics.median(times), "p20": q(0.2), "p80": q(0.8), "runs": runs}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    den = float(torch.linalg.vector_norm(ref))
    if not math.isfinite(float(out.double().abs().max())):
        return float("nan")
    return float(torch.linalg.vector_norm(out.double() - ref)) / max(den, 1e-300)


# --- masks and inputs ---------------------------------------------------------------------------

def unstructured_mask(m, k, density, gen):
    if density >= 1.0:
        return torch.ones(m, k, dtype=torch.bool, device=DEV)
    return torch.rand(m, k, device=DEV, generator=gen) < density


def block_mask(m, k, density, gen, bs=BLOCK):
    blocks = torch.rand(m // bs, k // bs, device=DEV, generator=gen) < density
    return blocks.repeat_interleave(bs, 0).repeat_interleave(bs, 1)


# --- rows ---------------------------------------------------------------------------------------

class Ctx:
    """Inputs shared by the rows of one (shape, dtype): x, dy, and the float64 reference pieces."""

    def __init__(self, m, k, n, dtype, gen):
        self.m, self.k, self.n, self.dtype = m, k, n, dtype
        self.x = torch.randn(n, k, device=DEV, dtype=dtype, generator=gen)
        self.dy = torch.randn(n, m, device=DEV, dtype=dtype, generator=gen) / math.sqrt(m)
        self.dense = torch.nn.Linear(k, m, device=DEV, dtype=dtype)


def reference(ctx: Ctx, dense_w: torch.Tensor, bias: torch.Tensor):
    """float64 y, dx, dW(dense shape, unmasked) for weight dense_w."""
    x64, dy64, w64 = ctx.x.double(), ctx.dy.double(), dense_w.double()
    y = x64 @ w64.t() + bias.double()
    dx = dy64 @ w64
    dw = dy64.t() @ x64
    return y, dx, dw


def run_module(ctx: Ctx, layer, mask, dense_w, modes) -> dict:
    """Time fwd / step of a module (SparseLinear or nn.Linear); errors against float64."""
    res: dict = {}
    x = ctx.x
    bias = layer.bias
    need_ref = mask is not None
    ref = reference(ctx, dense_w, bias.detach()) if need_ref else None

    def fwd():
        with torch.no_grad():
            return layer(x)

    xg = x.detach().clone().requires_grad_()

    def step():
        y = layer(xg)
        y.backward(ctx.dy)

    params = [p for p in layer.parameters()] + [xg]
    if "fwd" in modes:
        try:
            res["backends_fwd"] = probe(fwd)
            if need_ref:
                res["err_fwd"] = rel_err(fwd(), ref[0])
            res["fwd"] = time_ms(fwd)
        except Exception as error:  # noqa: BLE001
            res["fwd_error"] = describe(error)
        torch.cuda.empty_cache()
    if "step" in modes:
        try:
            for p in params:
                p.grad = None
            res["backends_step"] = probe(step)
            if need_ref:
                res["err_dx"] = rel_err(xg.grad, ref[1])
                gw = layer.weight.grad
                if isinstance(layer, SparseLinear):
                    gw = layer.from_layout(gw)
                res["err_dw"] = rel_err(gw, ref[2] * mask)
            ref = None
            res["step"] = time_ms(step, reset=params)
        except Exception as error:  # noqa: BLE001
            res["step_error"] = describe(error)
        for p in params:
            p.grad = None
    return res


def describe(error: BaseException) -> str:
    if isinstance(error, torch.OutOfMemoryError):
        return "OutOfMemoryError: " + str(error).split("\n")[0][:300]
    return f"{type(error).__name__}: {error}"[:600]


def make_layer(ctx, layout, mask):
    layer = SparseLinear(ctx.k, ctx.m, bias=True, mask=mask, layout=layout, blocksize=BLOCK, device=DEV,
                         dtype=ctx.dtype)
    assert layer.layout == layout, (layer.layout, layout)
    return layer


def sparse_row(ctx, layer, mask, modes):
    with torch.no_grad():
        dense_w = layer.dense_weight().detach()
    out = run_module(ctx, layer, mask, dense_w, modes)
    out["nnz"] = int(mask.sum())
    return out


def csr_spmm_row(ctx, layer):
    """The op granet.csr_spmm alone (CUDA kernel where the dtype has one), forward only, no bias."""
    crow, col, vals = layer.crow_indices, layer.col_indices, layer.weight.detach()
    x = ctx.x

    def fwd():
        return granet_kernels.ops.csr_spmm(crow, col, vals, x)

    dense_w = layer.dense_weight().detach().double()
    res = {"backends_fwd": probe(fwd), "err_fwd": rel_err(fwd(), x.double() @ dense_w.t())}
    res["fwd"] = time_ms(fwd)
    return res


def masked_kernel_row(ctx, layer):
    """The Triton masked-matmul kernel with the tile occupancy map computed once (as a caller that
    caches it per mask update would), forward only."""
    from granet_kernels.triton import masked_matmul as mm

    w, mask, b = layer.weight.detach(), layer.weight_mask, layer.bias.detach()
    occ = mm.tile_occupancy(mask)
    x = ctx.x

    def fwd():
        return mm.masked_matmul(x, w, mask, b, occupancy=occ)

    ref = x.double() @ (w.double() * mask).t() + b.double()
    res = {"backends_fwd": ["triton kernel, occupancy cached"], "err_fwd": rel_err(fwd(), ref),
           "occupied_tiles": float(occ.float().mean())}
    res["fwd"] = time_ms(fwd)
    return res


def cusparse_row(ctx, layer, modes):
    """torch.sparse CSR (cuSPARSE): y^T = W @ x^T; step adds dx = (W^T @ dy^T)^T with W^T's CSR
    built from the values each step, and dW = sampled_addmm(pattern, dy^T, x)."""
    crow, col, vals = layer.crow_indices, layer.col_indices, layer.weight.detach()
    b = layer.bias.detach()
    m, k = ctx.m, ctx.k
    w = torch.sparse_csr_tensor(crow.long(), col.long(), vals, (m, k))
    x, dy = ctx.x, ctx.dy
    dense_w = layer.dense_weight().detach().double()
    res: dict = {"backends_fwd": ["torch.sparse CSR (cuSPARSE)"]}

    def fwd():
        return torch.mm(w, x.t()).t() + b

    if "fwd" in modes:
        try:
            res["err_fwd"] = rel_err(fwd(), x.double() @ dense_w.t() + b.double())
            res["fwd"] = time_ms(fwd)
        except Exception as error:  # noqa: BLE001
            res["fwd_error"] = describe(error)
    if "step" in modes:
        try:
            res.update(_cusparse_step(ctx, layer, w, b, dense_w))
        except Exception as error:  # noqa: BLE001
            res["step_error"] = describe(error)
    return res


def _cusparse_step(ctx, layer, w, b, dense_w):
    crow, col, vals = layer.crow_indices, layer.col_indices, layer.weight.detach()
    ccol64, row64, perm64 = layer.ccol_indices.long(), layer.row_indices.long(), layer.perm.long()
    m, k = ctx.m, ctx.k
    x, dy = ctx.x, ctx.dy
    pattern = torch.sparse_csr_tensor(crow.long(), col.long(), torch.zeros_like(vals), (m, k))

    def step():
        y = torch.mm(w, x.t()).t() + b  # noqa: F841 (the forward's output)
        wt = torch.sparse_csr_tensor(ccol64, row64, vals[perm64], (k, m))
        dx = torch.mm(wt, dy.t()).t()
        dw = torch.sparse.sampled_addmm(pattern, dy.t(), x, beta=0.0)
        db = dy.sum(0)
        return dx, dw, db

    dx, dw, _ = step()
    res = {"err_dx": rel_err(dx, dy.double() @ dense_w)}
    ref_dw = (dy.double().t() @ x.double())[layer._index().rows(), col.long()]
    res["err_dw"] = rel_err(dw.values(), ref_dw)
    res["step"] = time_ms(step)
    return res


def torch_bsr_row(ctx, layer):
    """torch BSR forward: W.to_sparse_bsr((32, 32)) @ x^T (torch's Triton BSR kernel or cuSPARSE)."""
    dense_w = layer.dense_weight().detach()
    w = dense_w.to_sparse_bsr((BLOCK, BLOCK))
    b = layer.bias.detach()
    x = ctx.x

    def fwd():
        return torch.mm(w, x.t()).t() + b

    res = {"backends_fwd": ["torch BSR"],
           "err_fwd": rel_err(fwd(), x.double() @ dense_w.double().t() + b.double())}
    res["fwd"] = time_ms(fwd)
    return res


# --- driver -------------------------------------------------------------------------------------

def ceilings() -> dict:
    """The two ceilings METHOD.md asks for: a large bf16 GEMM and a device-to-device copy."""
    out = {}
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    t = time_ms(lambda: a @ b)["ms"]
    out["bf16_gemm_8192_tflops"] = 2 * 8192**3 / t / 1e9
    a32, b32 = a.float(), b.float()
    t = time_ms(lambda: a32 @ b32)["ms"]
    out["fp32_gemm_8192_tflops"] = 2 * 8192**3 / t / 1e9
    src = torch.empty(2**30, dtype=torch.uint8, device=DEV).random_()
    dst = torch.empty_like(src)
    t = time_ms(lambda: dst.copy_(src))["ms"]
    out["copy_GBps_read_plus_write"] = 2 * src.numel() / t / 1e6
    del a, b, a32, b32, src, dst
    torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_bench.json")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new rows after this")
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES))
    parser.add_argument("--dtypes", nargs="*", default=["bf16", "fp32"])
    parser.add_argument("--densities", type=float, nargs="*", default=[0.1, 0.05, 0.02])
    parser.add_argument("--quick", action="store_true", help="one shape (the small one), bf16 only")
    parser.add_argument("--no-ceilings", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.dtypes = ["W4096x4096_N256"], ["bf16"]
    if not torch.cuda.is_available():
        print("no CUDA GPU visible", file=sys.stderr)
        return 2

    t0 = time.time()
    install_recorders()
    props = torch.cuda.get_device_properties(0)
    try:
        import triton
        triton_version = triton.__version__
    except Exception as error:  # noqa: BLE001
        triton_version = f"not importable: {error}"
    payload = {
        "benchmark": "gpu_linear",
        "device": torch.cuda.get_device_name(0),
        "sms": props.multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "build_info": granet_kernels.build_info(),
        "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "protocol": "median of CUDA-event-timed runs, L2 flushed before each, after warm-up; "
                    "fwd under no_grad; step = forward + backward (dx, dW, db), grads None between runs",
        "ceilings": {},
        "rows": [],
    }

    def save():
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, args.out)

    if not args.no_ceilings:
        try:
            payload["ceilings"] = ceilings()
        except Exception as error:  # noqa: BLE001
            payload["ceilings"] = {"error": repr(error)}
        print("ceilings", payload["ceilings"], flush=True)
        save()

    def over_budget():
        return time.time() - t0 > args.budget_s

    def record(base: dict, fn):
        row = dict(base)
        if over_budget():
            row["error"] = "skipped: time budget"
        else:
            start = time.time()
            try:
                row.update(fn())
            except Exception as error:  # noqa: BLE001
                row["error"] = describe(error)
                row["traceback"] = traceback.format_exc()[-1500:]
            row["wall_s"] = round(time.time() - start, 2)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        payload["rows"].append(row)
        save()
        print(one_line(row), flush=True)
        return row

    order = [(s, d) for d in args.dtypes for s in args.shapes]
    if "bf16" in args.dtypes and "fp32" in args.dtypes:
        order = [(s, "bf16") for s in args.shapes] + [(s, "fp32") for s in args.shapes]
    for shape_name, dtype_name in order:
        m, k, n = SHAPES[shape_name]
        dtype = DTYPES[dtype_name]
        gen = torch.Generator(device=DEV).manual_seed(1234)
        try:
            ctx = Ctx(m, k, n, dtype, gen)
        except Exception as error:  # noqa: BLE001
            record({"shape": shape_name, "dtype": dtype_name, "layout": "setup"}, lambda: (_ for _ in ()).throw(error))
            continue
        base = {"shape": shape_name, "M": m, "K": k, "N": n, "dtype": dtype_name}
        dense_flops = 2 * m * k * n
        dense = record({**base, "layout": "dense (cuBLAS)", "density": 1.0, "mask": "-", "nnz": m * k},
                       lambda: run_module(ctx, ctx.dense, None, None, ("fwd", "step")))

        def layer_row(layout, mask, keep=None):
            def fn():
                layer = make_layer(ctx, layout, mask)
                if keep is not None:
                    keep[layout] = layer
                return sparse_row(ctx, layer, mask, ("fwd", "step"))
            return fn

        record({**base, "layout": "masked", "density": 1.0, "mask": "all"},
               layer_row("masked", unstructured_mask(m, k, 1.0, gen)))

        for d in args.densities:
            layers = {}
            umask = unstructured_mask(m, k, d, gen)
            record({**base, "layout": "masked", "density": d, "mask": "unstructured"},
                   layer_row("masked", umask, layers))
            if "masked" in layers:
                lay = layers.pop("masked")
                record({**base, "layout": "masked kernel (occupancy cached)", "density": d,
                        "mask": "unstructured", "nnz": int(umask.sum())}, lambda: masked_kernel_row(ctx, lay))
                del lay
            record({**base, "layout": "csr", "density": d, "mask": "unstructured"}, layer_row("csr", umask, layers))
            if "csr" in layers:
                lay = layers.pop("csr")
                record({**base, "layout": "csr_spmm op (fwd, no bias)", "density": d, "mask": "unstructured",
                        "nnz": lay.nnz}, lambda: csr_spmm_row(ctx, lay))
                record({**base, "layout": "torch.sparse CSR (cuSPARSE)", "density": d, "mask": "unstructured",
                        "nnz": lay.nnz}, lambda: cusparse_row(ctx, lay, ("fwd", "step")))
                del lay
            del umask
            torch.cuda.empty_cache()

            bmask = block_mask(m, k, d, gen)
            record({**base, "layout": "bsr", "density": d, "mask": f"block{BLOCK}"}, layer_row("bsr", bmask, layers))
            if "bsr" in layers:
                lay = layers.pop("bsr")
                record({**base, "layout": "torch BSR", "density": d, "mask": f"block{BLOCK}",
                        "nnz": int(bmask.sum())}, lambda: torch_bsr_row(ctx, lay))
                del lay
            record({**base, "layout": "masked", "density": d, "mask": f"block{BLOCK}"}, layer_row("masked", bmask))
            layers.clear()
            del bmask
            torch.cuda.empty_cache()
        del ctx
        torch.cuda.empty_cache()
        for row in payload["rows"]:
            if row.get("shape") == shape_name and row.get("dtype") == dtype_name:
                add_ratios(row, dense, dense_flops)
        save()

    payload["elapsed_s"] = round(time.time() - t0, 1)
    save()
    print_table(payload)
    print(f"wrote {args.out}")
    return 0


def add_ratios(row: dict, dense: dict, dense_flops: int) -> None:
    nnz = row.get("nnz")
    density_flops = dense_flops * (nnz / (row["M"] * row["K"])) if nnz is not None and "M" in row else None
    for mode, mult in (("fwd", 1), ("step", 3)):
        if mode in row and mode in dense and "ms" in row[mode]:
            row[mode]["speedup_vs_dense"] = dense[mode]["ms"] / row[mode]["ms"]
            if density_flops is not None:
                row[mode]["sparse_tflops"] = mult * density_flops / row[mode]["ms"] / 1e9


def one_line(row: dict) -> str:
    parts = [row.get("shape", ""), row.get("dtype", ""), row.get("layout", ""), f"d={row.get('density', '')}",
             row.get("mask", "")]
    for mode in ("fwd", "step"):
        if mode in row:
            parts.append(f"{mode} {row[mode]['ms']:.3f} ms")
    for key in ("err_fwd", "err_dx", "err_dw"):
        if key in row:
            parts.append(f"{key} {row[key]:.1e}")
    for key in ("backends_fwd", "backends_step"):
        if key in row:
            parts.append(f"{key}={','.join(row[key])}")
    for key in ("fwd_error", "step_error", "error"):
        if key in row:
            parts.append(f"{key.upper()} " + row[key][:200])
    return " | ".join(str(p) for p in parts)


def print_table(payload: dict) -> None:
    print()
    print(f"{payload['device']}  torch {payload['torch']}  triton {payload['triton']}  ceilings {payload['ceilings']}")
    head = f"{'shape':22s} {'dt':4s} {'layout':30s} {'dens':>5s} {'mask':7s} {'fwd ms':>8s} {'x dense':>7s} " \
           f"{'step ms':>8s} {'x dense':>7s} {'TF/s':>6s} {'err':>7s}  backends"
    print(head)
    for row in payload["rows"]:
        def cell(mode, key, fmt):
            v = row.get(mode, {}).get(key)
            return format(v, fmt) if v is not None else "-"
        err = max((row[k] for k in ("err_fwd", "err_dx", "err_dw") if k in row), default=None)
        tf = row.get("step", {}).get("sparse_tflops") or row.get("fwd", {}).get("sparse_tflops")
        backs = sorted(set(row.get("backends_fwd", [])) | set(row.get("backends_step", [])))
        line = (f"{row.get('shape', ''):22s} {row.get('dtype', ''):4s} {row.get('layout', '')[:30]:30s} "
                f"{row.get('density', 0):5.2f} {row.get('mask', '')[:7]:7s} {cell('fwd', 'ms', '8.3f'):>8s} "
                f"{cell('fwd', 'speedup_vs_dense', '7.2f'):>7s} {cell('step', 'ms', '8.3f'):>8s} "
                f"{cell('step', 'speedup_vs_dense', '7.2f'):>7s} {format(tf, '6.1f') if tf else '-':>6s} "
                f"{format(err, '7.1e') if err is not None else '-':>7s}  {','.join(backs)}")
        for key in ("fwd_error", "step_error", "error"):
            if key in row:
                line += f"  {key.upper()} " + row[key][:100]
        print(line)


if __name__ == "__main__":
    sys.exit(main())
