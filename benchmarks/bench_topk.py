"""Global top-k threshold and regrowth on the CPU: granet's native selection kernels vs torch.

topk_threshold: the k-th largest |w| over ResNet-50's 54 weight tensors (53 convolutions + the fc
layer, 25,502,912 values; random normal, no weights downloaded), and over all 161 of its parameter
tensors (+ batch-norm and fc bias: 25,557,032 values), keep 10% (k = int(0.1 * total)), fp32:
    granet      granet_kernels.ops.topk_threshold (public op, cpu backend: radix select in place)
    native      torch.ops.granet._native_topk_threshold (the kernel alone, no Python checks)
    torch.topk  torch.topk(torch.cat([t.abs().flatten() ...]), k)  (cat + abs + topk timed together)
    kthvalue    torch.kthvalue on the same concatenation (what the op's reference does)
    one read    sum(t.sum() for t in tensors): one vectorised pass over the data, the floor
regrow: one 512x512x3x3 layer, mask density 0.1, k = 1% of the layer (10% of its active count):
    granet      granet_kernels.ops.regrow (cpu backend)
    torch.topk  torch.topk(|score| with active positions set to -1, k).indices, sorted
    reference   the op's pure-torch reference (nonzero + stable sort)
Median milliseconds of interleaved repeats after warm-up, 1 thread by default.

    python benchmarks/bench_topk.py                  # table + benchmarks/results/topk_<cpu>.json
    python benchmarks/bench_topk.py --repeats 15 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import granet_kernels as gk  # noqa: E402
from granet_kernels import ops  # noqa: E402
from granet_kernels.ops import reference  # noqa: E402


def resnet50_parameter_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter of torchvision's resnet50, in named_parameters() order."""
    shapes = [("conv1.weight", (64, 3, 7, 7)), ("bn1.weight", (64,)), ("bn1.bias", (64,))]
    inplanes = 64
    for layer, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            out = width * 4
            shapes += [
                (f"{p}.conv1.weight", (width, inplanes, 1, 1)), (f"{p}.bn1.weight", (width,)), (f"{p}.bn1.bias", (width,)),
                (f"{p}.conv2.weight", (width, width, 3, 3)), (f"{p}.bn2.weight", (width,)), (f"{p}.bn2.bias", (width,)),
                (f"{p}.conv3.weight", (out, width, 1, 1)), (f"{p}.bn3.weight", (out,)), (f"{p}.bn3.bias", (out,)),
            ]
            if b == 0:
                shapes += [(f"{p}.downsample.0.weight", (out, inplanes, 1, 1)),
                           (f"{p}.downsample.1.weight", (out,)), (f"{p}.downsample.1.bias", (out,))]
            inplanes = out
    shapes += [("fc.weight", (1000, 2048)), ("fc.bias", (1000,))]
    return shapes


def numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def weight_shapes(all_parameters: bool) -> list[tuple[int, ...]]:
    params = resnet50_parameter_shapes()
    if all_parameters:
        shapes = [s for _, s in params]
        assert len(shapes) == 161 and sum(map(numel, shapes)) == 25_557_032
    else:
        shapes = [s for name, s in params if name.endswith("weight") and len(s) > 1]
        assert len(shapes) == 54 and sum(map(numel, shapes)) == 25_502_912
    return shapes


def measure_topk(shapes, keep, repeats, gen):
    tensors = [torch.randn(s, generator=gen) for s in shapes]
    total = sum(t.numel() for t in tensors)
    k = int(keep * total)

    def cat_abs():
        return torch.cat([t.abs().flatten() for t in tensors])

    fns = {
        "granet": lambda: ops.topk_threshold(tensors, k),
        "native": lambda: torch.ops.granet._native_topk_threshold(tensors, k),
        "torch.topk": lambda: torch.topk(cat_abs(), k, sorted=False).values.min(),
        "kthvalue": lambda: torch.kthvalue(cat_abs(), total - k + 1).values,
        "one read": lambda: sum(float(t.sum()) for t in tensors),
    }
    ours = fns["granet"]()
    assert torch.equal(ours, fns["kthvalue"]()) and torch.equal(ours, fns["torch.topk"]()), "thresholds differ"
    ms = common.time_interleaved(fns, warmup=2, repeats=repeats)
    return {"tensors": len(tensors), "total": total, "k": k}, ms


def measure_regrow(shape, density, k_fraction, repeats, gen):
    n = numel(shape)
    mask = torch.rand(shape, generator=gen) < density
    score = torch.randn(shape, generator=gen)
    k = int(k_fraction * n)

    def torch_topk():
        s = torch.where(mask, torch.tensor(-1.0), score.abs())
        return torch.sort(torch.topk(s.flatten(), k, sorted=False).indices).values

    fns = {
        "granet": lambda: ops.regrow(mask, score, k),
        "torch.topk": torch_topk,
        "reference": lambda: reference.regrow(mask, score, k),
    }
    assert torch.equal(fns["granet"](), fns["reference"]()), "regrow differs from the reference"
    ms = common.time_interleaved(fns, warmup=2, repeats=repeats)
    return {"shape": list(shape), "density": density, "inactive": int((~mask).sum()), "k": k}, ms


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", type=float, default=0.1, help="fraction of magnitudes kept (k = keep * total)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/topk_<cpu>.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = common.environment()
    isa = gk.build_info()["cpu_isa"]
    gen = torch.Generator().manual_seed(0)
    print(f"# bench_topk on {env['device']} (torch {env['torch']}, ISA {isa}), fp32, {args.threads} thread(s)")
    rows = []
    print(f"{'case':>34} {'impl':>11} {'ms':>9} {'x torch.topk':>12}")
    for label, all_params in (("resnet50 weights", False), ("resnet50 all params", True)):
        info, ms = measure_topk(weight_shapes(all_params), args.keep, args.repeats, gen)
        case = f"{label} ({info['tensors']} t, {info['total']})"
        for impl, t in ms.items():
            speedup = ms["torch.topk"] / t
            rows.append({"op": "topk_threshold", "case": label, **info, "keep": args.keep, "impl": impl, "ms": t,
                         "speedup_vs_torch_topk": speedup, "speedup_vs_kthvalue": ms["kthvalue"] / t})
            print(f"{case:>34} {impl:>11} {t:9.2f} {speedup:12.1f}", flush=True)
    info, ms = measure_regrow((512, 512, 3, 3), 0.1, 0.01, args.repeats, gen)
    case = f"regrow 512x512x3x3 d=0.1 k={info['k']}"
    for impl, t in ms.items():
        speedup = ms["torch.topk"] / t
        rows.append({"op": "regrow", "case": "512x512x3x3", **info, "impl": impl, "ms": t,
                     "speedup_vs_torch_topk": speedup})
        print(f"{case:>34} {impl:>11} {t:9.2f} {speedup:12.1f}", flush=True)
    out = args.out or common.default_result_path("topk", env)
    common.write_json(out, {"benchmark": "topk", "dtype": "float32", "env": env, "cpu_isa": isa,
                            "load_average": os.getloadavg(), "rows": rows})


if __name__ == "__main__":
    main()
