"""Sparse conv2d on the CPU: granet's cpu kernels vs torch's dense convolution (oneDNN).

PERFORMANCE.md's conv shapes (ResNet-50 3x3 256->256 and 1x1 1024->256 at 14x14, batch 64; VGG-19
512->512 3x3 at 4x4 and 2x2, batch 128), random unstructured filter masks at densities
0.5 / 0.2 / 0.1 / 0.05 / 0.02, fp32, 1 thread and all threads:
    dense:   F.conv2d (forward); aten.convolution_backward for grad_input (dx), grad_weight (dW) and
             both (backward); step = F.conv2d + autograd backward giving grad_input and grad_weight
    granet:  sparse_conv2d (forward), sparse_conv2d_dx (dx), sparse_conv2d_dw (dW),
             sparse_conv2d_backward (backward: dx + dW in one pass), step = forward + fused backward;
             cpu backend through the public ops (checks, packing and unpacking included)
Every part's time is the median of interleaved repeats (dense and sparse in turn, so that noise on a
shared machine hits both alike). "x dense" = dense ms / granet ms of the same part; "of ideal" =
x dense * density (1.0 = the FLOP saving fully realised).

    python benchmarks/bench_conv.py             # everything above, JSON to benchmarks/results/conv_<cpu>.json
    python benchmarks/bench_conv.py --quick     # 3x3 256->256 at densities 0.1 and 0.05, 1 and all threads
    python benchmarks/bench_conv.py --shapes 3x3-256 --densities 0.1 --threads 1 --repeats 15
    python benchmarks/bench_conv.py --shapes 3x3-256 --batches 1 4 --threads 1   # small batches
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
from granet_kernels.ops.samples import random_csr  # noqa: E402

# name -> (batch, C_in, C_out, H, W, kernel, padding)
SHAPES = {
    "3x3-256": (64, 256, 256, 14, 14, 3, 1),
    "1x1-1024": (64, 1024, 256, 14, 14, 1, 0),
    "3x3-512-4x4": (128, 512, 512, 4, 4, 3, 1),
    "3x3-512-2x2": (128, 512, 512, 2, 2, 3, 1),
}
DENSITIES = [0.5, 0.2, 0.1, 0.05, 0.02]
PARTS = ("forward", "dx", "dW", "backward", "step")


def shape_label(name, batch=None):
    n, cin, cout, h, w, k, _ = SHAPES[name]
    return f"{k}x{k} {cin}->{cout} {h}x{w} b{batch or n}"


def measure(name, densities, threads, repeats, dtype=torch.float32, batch=None):
    """Rows of one shape and thread count: dense once, each density's sparse ops, all interleaved.
    `batch` replaces the shape's own batch size."""
    torch.set_num_threads(threads)
    n, cin, cout, h, w, k, pad = SHAPES[name]
    n = batch or n
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=dtype)
    dy = torch.randn(n, cout, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(cout, cin, k, k, generator=gen, dtype=dtype)
    geo = ([k, k], [1, 1], [pad, pad], [1, 1])
    x_leaf = x.clone().requires_grad_()
    w_leaf = weight.clone().requires_grad_()

    def dense_step():
        x_leaf.grad = w_leaf.grad = None
        F.conv2d(x_leaf, w_leaf, None, 1, pad).backward(dy)

    def conv_backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            dy, x, weight, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, mask
        )

    fns = {
        "dense/forward": lambda: F.conv2d(x, weight, None, 1, pad),
        "dense/dx": conv_backward([True, False, False]),
        "dense/dW": conv_backward([False, True, False]),
        "dense/backward": conv_backward([True, True, False]),
        "dense/step": dense_step,
    }
    ops = gk.ops
    for d in densities:
        crow, col, values = random_csr(cout, cin * k * k, d, gen=gen, dtype=dtype)

        def cpu(fn):
            def run():
                with gk.backend("cpu"):
                    return fn()
            return run

        def step(crow=crow, col=col, values=values):
            ops.sparse_conv2d(x, crow, col, values, *geo)
            ops.sparse_conv2d_backward(dy, x, crow, col, values, *geo)

        fns[f"{d}/forward"] = cpu(lambda crow=crow, col=col, values=values: ops.sparse_conv2d(x, crow, col, values, *geo))
        fns[f"{d}/dx"] = cpu(lambda crow=crow, col=col, values=values: ops.sparse_conv2d_dx(dy, crow, col, values, list(x.shape), *geo))
        fns[f"{d}/dW"] = cpu(lambda crow=crow, col=col: ops.sparse_conv2d_dw(dy, x, crow, col, *geo))
        fns[f"{d}/backward"] = cpu(lambda crow=crow, col=col, values=values: ops.sparse_conv2d_backward(dy, x, crow, col, values, *geo))
        fns[f"{d}/step"] = cpu(step)

        # Correctness of what is timed (cheap next to the timing).
        with gk.backend("cpu"):
            y = ops.sparse_conv2d(x, crow, col, values, *geo)
            dx, dw = ops.sparse_conv2d_backward(dy, x, crow, col, values, *geo)
        ref = gk.ops.reference
        for got, want in ((y, ref.sparse_conv2d(x, crow, col, values, *geo)),
                          (dx, ref.sparse_conv2d_dx(dy, crow, col, values, list(x.shape), *geo)),
                          (dw, ref.sparse_conv2d_dw(dy, x, crow, col, *geo))):
            err = float((got - want).abs().max()) / max(1.0, float(want.abs().max())) if want.numel() else 0.0
            assert err < 1e-4, f"{name} d={d}: granet disagrees with the reference (relative error {err:.2e})"

    times = common.time_interleaved(fns, repeats=repeats)
    rows = []
    for part in PARTS:
        base = times[f"dense/{part}"]
        rows.append({"shape": name, "label": shape_label(name, n), "batch": n, "density": 1.0, "threads": threads,
                     "impl": "dense", "part": part, "ms": base, "speedup_vs_dense": 1.0, "fraction_of_ideal": None})
        for d in densities:
            ms = times[f"{d}/{part}"]
            rows.append({"shape": name, "label": shape_label(name, n), "batch": n, "density": d, "threads": threads,
                         "impl": "granet", "part": part, "ms": ms, "speedup_vs_dense": base / ms,
                         "fraction_of_ideal": base / ms * d})
    return rows


def print_rows(rows):
    dense = {(r["shape"], r["batch"], r["threads"], r["part"]): r["ms"] for r in rows if r["impl"] == "dense"}
    for r in rows:
        if r["impl"] == "dense":
            continue
        print(f"{r['label']:>26} {r['density']:>5} {r['threads']:>3} {r['part']:>9} "
              f"{dense[(r['shape'], r['batch'], r['threads'], r['part'])]:10.2f} {r['ms']:10.2f} {r['speedup_vs_dense']:8.2f} "
              f"{r['fraction_of_ideal']:8.2f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--densities", type=float, nargs="*", default=DENSITIES)
    parser.add_argument("--threads", type=int, nargs="*", default=None,
                        help="thread counts (default: 1 and all cores)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3x3 256->256 at densities 0.1 / 0.05, 3 repeats")
    parser.add_argument("--batches", type=int, nargs="*", help="batch sizes instead of the shapes' own")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/conv_<cpu>.json)")
    args = parser.parse_args(argv)
    if args.batches and any(b < 1 for b in args.batches):
        parser.error("--batches must be positive")
    all_threads = os.cpu_count() or 1
    threads = args.threads or sorted({1, all_threads})
    shapes, densities, repeats = args.shapes, args.densities, args.repeats
    if args.quick:
        shapes, densities, repeats = ["3x3-256"], [0.1, 0.05], 3
    env = common.environment()
    env["threads"] = threads
    isa = gk.build_info()["cpu_isa"]
    print(f"# bench_conv on {env['device']} (torch {env['torch']}, ISA {isa}), fp32, threads {threads}, "
          f"median of {repeats} interleaved repeats")
    print(f"{'shape':>26} {'d':>5} {'thr':>3} {'part':>9} {'dense ms':>10} {'sparse ms':>10} {'x dense':>8} {'of ideal':>8}")
    rows = []
    for t in threads:
        for name in shapes:
            for batch in args.batches or [None]:
                new = measure(name, densities, t, repeats, batch=batch)
                print_rows(new)
                rows += new
    out = args.out or common.default_result_path("conv", env)
    common.write_json(out, {"benchmark": "conv", "dtype": "float32", "env": env, "cpu_isa": isa,
                            "loadavg": os.getloadavg(), "rows": rows})


if __name__ == "__main__":
    main()
