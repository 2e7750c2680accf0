"""Block-sparse (BSR) products on the CPU: granet's cpu kernels vs dense matmuls and torch's BSR.

W 4096x4096 with 32x32 blocks at block densities 0.2 / 0.1 / 0.05, batch 256, fp32, 1 thread:
    dense:       F.linear(x, W) (forward), dy @ W (dx), dy^T @ x (dW)
    granet.bsr:  bsr_spmm (forward), bsr_spmm_t (dx), bsr_sddmm (dW), cpu backend, public ops
    torch.bsr:   (W * blockmask).to_sparse_bsr((32, 32)) @ x^T (forward only)
Median milliseconds of interleaved repeats (the machine may be shared).

    python benchmarks/bench_bsr.py                    # the table above, JSON to benchmarks/results/
    python benchmarks/bench_bsr.py --densities 0.1 --repeats 15
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import granet_kernels as gk  # noqa: E402
from granet_kernels.ops._index import transpose_index  # noqa: E402

DENSITIES = [0.2, 0.1, 0.05]


def block_pattern(block_rows, block_cols, density, gen):
    """A random block mask with exactly round(density * blocks) blocks, and its BSR index."""
    total = block_rows * block_cols
    keep = torch.randperm(total, generator=gen)[: int(round(density * total))]
    mask = torch.zeros(total, dtype=torch.bool)
    mask[keep] = True
    mask = mask.reshape(block_rows, block_cols)
    crow = torch.zeros(block_rows + 1, dtype=torch.int32)
    crow[1:] = torch.cumsum(mask.sum(1), 0)
    col = torch.nonzero(mask)[:, 1].to(torch.int32)
    return mask, crow, col


def measure(m, k, batch, bs, density, threads, repeats, with_torch_bsr=True):
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(m, k, generator=gen)
    x = torch.randn(batch, k, generator=gen)
    dy = torch.randn(batch, m, generator=gen)
    block_mask, crow, col = block_pattern(m // bs, k // bs, density, gen)
    values = w.reshape(m // bs, bs, k // bs, bs).permute(0, 2, 1, 3)[block_mask].contiguous()
    ccol, row, perm = transpose_index(crow, col, k // bs)
    ops = gk.ops

    def ours(fn):
        def run():
            with gk.backend("cpu"):
                return fn()
        return run

    fns = {
        "dense/forward": lambda: F.linear(x, w),
        "dense/dx": lambda: dy @ w,
        "dense/dW": lambda: dy.t() @ x,
        "granet.bsr/forward": ours(lambda: ops.bsr_spmm(crow, col, values, x)),
        "granet.bsr/dx": ours(lambda: ops.bsr_spmm_t(ccol, row, perm, values, dy)),
        "granet.bsr/dW": ours(lambda: ops.bsr_sddmm(crow, col, dy, x, bs)),
    }
    if with_torch_bsr:
        full_mask = block_mask.repeat_interleave(bs, 0).repeat_interleave(bs, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Sparse BSR tensor support is in beta state"
            w_bsr = (w * full_mask).to_sparse_bsr((bs, bs))
        xt = x.t().contiguous()
        fns["torch.bsr/forward"] = lambda: w_bsr @ xt

    # Correctness of what is timed (cheap next to the timing).
    with gk.backend("cpu"):
        y = ops.bsr_spmm(crow, col, values, x)
    dense_w = (w * block_mask.repeat_interleave(bs, 0).repeat_interleave(bs, 1))
    err = float((y - F.linear(x, dense_w)).abs().max() / F.linear(x, dense_w).abs().max())
    assert err < 1e-4, f"granet bsr_spmm disagrees with the dense product: relative error {err:.2e}"

    times = common.time_interleaved(fns, repeats=repeats)
    rows = []
    for name, ms in times.items():
        impl, part = name.split("/")
        base = times[f"dense/{part}"]
        rows.append({
            "shape": f"{m}x{k}", "batch": batch, "blocksize": bs, "block_density": density, "threads": threads,
            "impl": impl, "part": part, "ms": ms, "speedup_vs_dense": base / ms,
            "fraction_of_ideal": (base / ms) * density if impl != "dense" else None,
        })
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--densities", type=float, nargs="*", default=DENSITIES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=4096, help="W is size x size")
    parser.add_argument("--blocksize", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-torch-bsr", action="store_true", help="skip torch's BSR forward")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bsr_<cpu>.json)")
    args = parser.parse_args(argv)
    env = common.environment()
    env["threads"] = args.threads
    isa = gk.build_info()["cpu_isa"]
    print(f"# bench_bsr on {env['device']} (torch {env['torch']}, ISA {isa}), fp32, {args.threads} thread(s), "
          f"W {args.size}x{args.size}, blocks {args.blocksize}x{args.blocksize}, batch {args.batch}")
    print(f"{'d':>5} {'impl':>11} {'part':>8} {'ms':>9} {'x dense':>8} {'of ideal':>8}")
    rows = []
    for d in args.densities:
        for r in measure(args.size, args.size, args.batch, args.blocksize, d, args.threads, args.repeats,
                         not args.no_torch_bsr):
            rows.append(r)
            fi = f"{r['fraction_of_ideal']:.2f}" if r["fraction_of_ideal"] is not None else ""
            print(f"{d:>5} {r['impl']:>11} {r['part']:>8} {r['ms']:9.2f} {r['speedup_vs_dense']:8.2f} {fi:>8}",
                  flush=True)
    out = args.out or common.default_result_path("bsr", env)
    common.write_json(out, {"benchmark": "bsr", "dtype": "float32", "env": env, "cpu_isa": isa, "rows": rows})


if __name__ == "__main__":
    main()
