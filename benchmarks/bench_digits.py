"""GraNet and its baselines on scikit-learn's digits: an MLP (64 -> 1024 -> 1024 -> 10) at 95% sparsity,
dense / granet / gmp / rigl / static, 3 seeds each, through the training driver (granet-train's code).

    python benchmarks/bench_digits.py                 # table of mean +- std, JSON to benchmarks/results/
    python benchmarks/bench_digits.py --seeds 0 1 2 --epochs 30

Every run uses the driver's defaults for digits (SGD + Nesterov, cosine lr, fixed train/val/test split)
and differs only in --method (gmp starts dense, as GMP does; granet starts at the driver's default
initial density; rigl and static train at the final density from the first step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

from granet_kernels.train import TrainConfig, run  # noqa: E402

METHODS = ("dense", "granet", "gmp", "rigl", "static")


def one_run(method: str, seed: int, args, out_dir: str) -> dict:
    overrides = dict(method=method, seed=seed, final_density=args.final_density, mlp_hidden=args.hidden,
                     progress=False, plots=False, time_steps=0, out=os.path.join(out_dir, f"{method}-{seed}"),
                     threads=args.threads)
    if args.epochs:
        overrides["epochs"] = args.epochs
    if method == "gmp":
        overrides["init_density"] = 1.0
    start = time.perf_counter()
    summary = run(TrainConfig(**overrides))
    summary["wall_s"] = time.perf_counter() - start
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--final-density", type=float, default=0.05)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=0, help="0: the driver's default")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/digits_<cpu>.json)")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            for seed in args.seeds:
                s = one_run(method, seed, args, tmp)
                rows.append({"method": method, "seed": seed, **{k: s.get(k) for k in (
                    "val_accuracy", "test_accuracy", "final_density", "train_flops_x_dense", "inference_flops_x_dense",
                    "wall_s")}})
                print(f"{method:>7} seed {seed}: val {s['val_accuracy']:.4f} test {s['test_accuracy']:.4f} "
                      f"density {s['final_density']:.4f} ({s['wall_s']:.0f} s)", flush=True)

    def stat(method, key):
        values = [r[key] for r in rows if r["method"] == method]
        return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    print(f"\nMLP 64-{args.hidden}-{args.hidden}-10 on digits, final density {args.final_density}, "
          f"seeds {args.seeds}, {common.cpu_name()}")
    print("| method | val accuracy (%) | test accuracy (%) | final density | train FLOPs x dense | inference FLOPs x dense |")
    print("|---|---|---|---|---|---|")
    table = []
    for method in args.methods:
        (vm, vs), (tm, ts) = stat(method, "val_accuracy"), stat(method, "test_accuracy")
        dm, _ = stat(method, "final_density")
        fm, _ = stat(method, "train_flops_x_dense")
        im, _ = stat(method, "inference_flops_x_dense")
        table.append({"method": method, "val_mean": vm, "val_std": vs, "test_mean": tm, "test_std": ts,
                      "final_density": dm, "train_flops_x_dense": fm, "inference_flops_x_dense": im})
        print(f"| {method} | {100 * vm:.2f} ± {100 * vs:.2f} | {100 * tm:.2f} ± {100 * ts:.2f} | {dm:.4f} | {fm:.3f} | {im:.3f} |")

    env = common.environment()
    out = args.out or common.default_result_path("digits", env)
    common.write_json(out, {"benchmark": "digits", "env": env, "args": vars(args), "runs": rows, "table": table})

if __name__ == "__main__":
    main()
