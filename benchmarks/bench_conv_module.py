"""SparseConv2d (the module, `layout="auto"`) vs nn.Conv2d on the CPU: training step and inference,
for the strided and 1x1 convolutions of a ResNet at small batches, where the module's own routing
(stride > 1 over polyphase planes) matters and bench_conv.py, which times the ops at stride 1,
does not see it.

    python benchmarks/bench_conv_module.py                     # batches 1 2 4, d = 0.1, 1 thread
    python benchmarks/bench_conv_module.py --batches 1 --densities 0.1 0.3
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import granet_kernels as gk  # noqa: E402
from granet_kernels.nn import SparseConv2d  # noqa: E402

# name: (C_in, C_out, input H = W, kernel, stride, padding): ResNet-50's (v1.5) strided convolutions
# and a stride-1 3x3 for comparison
SHAPES = {
    "3x3s2-128-56": (128, 128, 56, 3, 2, 1),
    "3x3s2-256-28": (256, 256, 28, 3, 2, 1),
    "1x1s2-256-56": (256, 512, 56, 1, 2, 0),
    "1x1s2-512-28": (512, 1024, 28, 1, 2, 0),
    "3x3s1-256-14": (256, 256, 14, 3, 1, 1),
}


def measure(name, batch, densities, repeats):
    cin, cout, hw, k, s, p = SHAPES[name]
    gen = torch.Generator().manual_seed(0)
    dense = torch.nn.Conv2d(cin, cout, k, stride=s, padding=p)
    x = torch.randn(batch, cin, hw, hw, generator=gen, requires_grad=True)
    dy = torch.randn_like(dense(x))

    def step(module):
        def run():
            module.zero_grad(set_to_none=True)
            x.grad = None
            module(x).backward(dy)
        return run

    def infer(module):
        def run():
            with torch.no_grad():
                module(x)
        return run

    fns = {"dense/step": step(dense), "dense/inference": infer(dense)}
    layouts = {}
    for d in densities:
        sparse = SparseConv2d.from_dense(dense, density=d, layout="auto", generator=gen)
        layouts[d] = sparse.layout
        with torch.no_grad():  # what is timed is right
            want = torch.nn.functional.conv2d(x, sparse.dense_weight() * sparse.mask, sparse.bias, s, p)
            err = float((sparse(x) - want).abs().max()) / max(1.0, float(want.abs().max()))
        assert err < 1e-4, f"{name} d={d}: SparseConv2d disagrees with the dense masked convolution ({err:.2e})"
        fns[f"{d}/step"] = step(sparse)
        fns[f"{d}/inference"] = infer(sparse)
    times = common.time_interleaved(fns, repeats=repeats)
    rows = []
    for part in ("step", "inference"):
        base = times[f"dense/{part}"]
        for d in densities:
            ms = times[f"{d}/{part}"]
            rows.append({"shape": name, "batch": batch, "density": d, "layout": layouts[d], "part": part,
                         "dense_ms": base, "ms": ms, "speedup_vs_dense": base / ms})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--densities", type=float, nargs="*", default=[0.1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/conv_module_<cpu>.json)")
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batches):
        parser.error("--batches must be positive")
    torch.set_num_threads(args.threads)
    env = common.environment()
    env["threads"] = [args.threads]
    isa = gk.build_info()["cpu_isa"]
    print(f"# bench_conv_module on {env['device']} (torch {env['torch']}, ISA {isa}), fp32, {args.threads} thread(s), "
          f"median of {args.repeats} interleaved repeats")
    print(f"{'shape':>14} {'batch':>5} {'d':>5} {'layout':>6} {'part':>9} {'dense ms':>9} {'sparse ms':>9} {'x dense':>8}")
    rows = []
    for name in args.shapes:
        for batch in args.batches:
            for r in measure(name, batch, args.densities, args.repeats):
                print(f"{r['shape']:>14} {r['batch']:>5} {r['density']:>5} {r['layout']:>6} {r['part']:>9} "
                      f"{r['dense_ms']:9.2f} {r['ms']:9.2f} {r['speedup_vs_dense']:8.2f}", flush=True)
                rows.append(r)
    out = args.out or common.default_result_path("conv_module", env)
    common.write_json(out, {"benchmark": "conv_module", "dtype": "float32", "env": env, "cpu_isa": isa,
                            "loadavg": os.getloadavg(), "rows": rows})


if __name__ == "__main__":
    main()
