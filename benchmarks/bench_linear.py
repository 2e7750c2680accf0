"""SparseLinear vs dense nn.Linear (and torch.sparse CSR) on the CPU: forward, dx, dW and the
training step, for PERFORMANCE.md's reference shapes and densities, 1 thread and all threads.

    python benchmarks/bench_linear.py            # full table, JSON to benchmarks/results/
    python benchmarks/bench_linear.py --quick    # W 4096x4096, batch 256, d in {0.1, 0.05, 0.02}, 1 thread
    python benchmarks/bench_linear.py --quick --batches 1 8 32   # the same weight at small batches
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import granet_kernels as gk  # noqa: E402
from granet_kernels.nn import SparseLinear  # noqa: E402

SHAPES = [(4096, 4096, 256), (1024, 1024, 256)]  # (out, in, batch)
DENSITIES = [0.5, 0.2, 0.1, 0.05, 0.02, 0.01]


def dense_step(layer, x, dy):
    def run():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(dy)
    return run


def measure(out_f, in_f, batch, density, threads, layouts, peers, repeats):
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    dense = torch.nn.Linear(in_f, out_f)
    x = torch.randn(batch, in_f, generator=gen).requires_grad_()
    dy = torch.randn(batch, out_f, generator=gen)
    w = dense.weight.detach()
    fns = {
        "dense/forward": lambda: F.linear(x.detach(), w),
        "dense/dx": lambda: dy @ w,
        "dense/dW": lambda: dy.t() @ x.detach(),
        "dense/step": dense_step(dense, x, dy),
    }
    modules = {}
    for layout in layouts:
        module = SparseLinear.from_dense(dense, density=density, layout=layout, generator=gen)
        modules[layout] = module
        fns[f"{layout}/step"] = dense_step(module, x, dy)
        if layout == "csr":
            ops = gk.ops
            idx = (module.crow_indices, module.col_indices)
            tidx = (module.ccol_indices, module.row_indices, module.perm)
            vals = module.weight.detach()
            xd = x.detach()
            fns["csr/forward"] = lambda: ops.csr_spmm(*idx, vals, xd)
            fns["csr/dx"] = lambda: ops.csr_spmm_t(*tidx, vals, dy)
            fns["csr/dW"] = lambda: ops.csr_sddmm(*idx, dy, xd)
            fns["csr/backward"] = lambda: ops.csr_linear_backward(*tidx, vals, dy, xd)
    if "torch.sparse" in peers:
        mask = modules[layouts[0]].mask
        w_csr = (w * mask).to_sparse_csr()
        xt = x.detach().t().contiguous()
        dyt = dy.t().contiguous()
        w_csr_t = (w * mask).t().contiguous().to_sparse_csr()
        mask_csr = mask.to(w.dtype).to_sparse_csr()
        fns["torch.sparse/forward"] = lambda: w_csr @ xt
        fns["torch.sparse/dx"] = lambda: w_csr_t @ dyt
        fns["torch.sparse/dW"] = lambda: torch.sparse.sampled_addmm(mask_csr, dyt, x.detach(), beta=0.0)
    times = common.time_interleaved(fns, repeats=repeats)
    if "torch.sparse" in peers:
        times["torch.sparse/step"] = sum(times[f"torch.sparse/{p}"] for p in ("forward", "dx", "dW"))
    rows = []
    for name, ms in times.items():
        impl, part = name.split("/")
        base = times["dense/dx"] + times["dense/dW"] if part == "backward" else times.get(f"dense/{part}")
        rows.append({
            "shape": f"{out_f}x{in_f}", "batch": batch, "density": density, "threads": threads, "impl": impl,
            "part": part, "ms": ms, "speedup_vs_dense": base / ms if base else None,
            "fraction_of_ideal": (base / ms) * density if base and impl != "dense" else None,
        })
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, nargs="*", help="thread counts (default: 1 and all)")
    parser.add_argument("--densities", type=float, nargs="*")
    parser.add_argument("--layouts", nargs="*", default=["csr", "masked", "auto"])
    parser.add_argument("--batches", type=int, nargs="*", help="batch sizes instead of the shapes' own (256)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/linear_<cpu>.json)")
    args = parser.parse_args(argv)
    all_threads = os.cpu_count() or 1
    threads = args.threads or ([1] if args.quick else sorted({1, all_threads}))
    densities = args.densities or ([0.1, 0.05, 0.02] if args.quick else DENSITIES)
    shapes = SHAPES[:1] if args.quick else SHAPES
    if args.batches:
        if any(b < 1 for b in args.batches):
            parser.error("--batches must be positive")
        shapes = [(o, i, b) for o, i, _ in shapes for b in args.batches]
    env = common.environment()
    print(f"# bench_linear on {env['device']} (torch {env['torch']}, ISA {gk.build_info()['cpu_isa']}), fp32")
    header = f"{'shape':>10} {'batch':>5} {'d':>5} {'thr':>3} {'impl':>13} {'part':>8} {'ms':>9} {'x dense':>8} {'of ideal':>8}"
    print(header)
    rows = []
    for out_f, in_f, batch in shapes:
        for threads_n in threads:
            for d in densities:
                for r in measure(out_f, in_f, batch, d, threads_n, args.layouts, ["torch.sparse"], args.repeats):
                    rows.append(r)
                    sp = f"{r['speedup_vs_dense']:.2f}" if r["speedup_vs_dense"] else ""
                    fi = f"{r['fraction_of_ideal']:.2f}" if r["fraction_of_ideal"] else ""
                    print(f"{r['shape']:>10} {batch:>5} {d:>5} {threads_n:>3} {r['impl']:>13} {r['part']:>8} "
                          f"{r['ms']:9.2f} {sp:>8} {fi:>8}", flush=True)
    out = args.out or common.default_result_path("linear", env)
    common.write_json(out, {"benchmark": "linear", "dtype": "float32", "env": env,
                            "cpu_isa": gk.build_info()["cpu_isa"], "rows": rows})


if __name__ == "__main__":
    main()
