"""End-of-run numbers: FLOPs as multiples of dense (counted per layer from the masks, and measured
with FlopCounterMode), wall-clock per training step sparse vs dense, the final table."""

from __future__ import annotations

import copy
import math
import statistics
import time

import torch
from torch import nn

from granet_kernels.nn import densify_, sparse_modules


# --- FLOPs ------------------------------------------------------------------------------------------

def layer_densities_of(model: nn.Module) -> dict[str, float]:
    return {name: float(m.density) for name, m in sparse_modules(model)}


def global_density_of(model: nn.Module) -> float:
    mods = sparse_modules(model)
    total = sum(math.prod(m.weight_shape) for _, m in mods)
    return sum(m.nnz for _, m in mods) / total if total else 1.0


def detached_copy(model: nn.Module) -> nn.Module:
    """A deepcopy of `model` without the hooks the engine installed (they would report to it)."""
    m = copy.deepcopy(model)
    for sub in m.modules():
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                      "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs"):
            d = getattr(sub, hooks, None)
            if d is not None:
                d.clear()
    return m


def measured_inference_flops(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(sparse, dense) FLOPs of one forward of `x`, counted by torch's FlopCounterMode (the sparse
    ops' formulas count only nonzeros)."""
    from torch.utils.flop_counter import FlopCounterMode
    sparse = detached_copy(model).eval()
    dense = densify_(detached_copy(model)).eval()
    out = []
    for m in (sparse, dense):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            m(x)
        out.append(float(counter.get_total_flops()))
    return out[0], out[1]


# --- wall-clock per step ------------------------------------------------------------------------------

def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training_steps(model: nn.Module, make_optimizer, x: torch.Tensor, y: torch.Tensor, steps: int,
                        device: torch.device, autocast, warmup: int = 3, rounds: int = 3) -> tuple[float, float]:
    """Seconds per training step (forward, backward, optimizer step) of a copy of `model` and of a
    dense copy of it (densify_ on a deepcopy), each with a fresh optimizer, after `warmup` steps;
    the two are timed in alternating rounds and the fastest round of each counts."""
    sparse = detached_copy(model).train()
    dense = densify_(detached_copy(model)).train()
    crit = nn.CrossEntropyLoss()
    runners = []
    for m in (sparse, dense):
        opt = make_optimizer(m)

        def step(m=m, opt=opt):
            with autocast():
                loss = crit(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        runners.append(step)
    rng = torch.get_rng_state()
    for run in runners:
        for _ in range(warmup):
            run()
    per_round = max(1, steps // rounds)
    best = [math.inf, math.inf]
    for _ in range(rounds):
        for i, run in enumerate(runners):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(per_round):
                run()
            _sync(device)
            best[i] = min(best[i], (time.perf_counter() - t0) / per_round)
    torch.set_rng_state(rng)
    return best[0], best[1]


# --- the final table ---------------------------------------------------------------------------------

def format_table(s: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{v:.4f}"

    def ratio(v):
        return "-" if v is None else f"{v:.3f}x dense"
    rows = [
        ("validation accuracy", pct(s.get("val_accuracy"))),
        ("test accuracy", pct(s.get("test_accuracy"))),
        ("final density", f"{s['final_density']:.4f}  (target {s['target_density']:.4f}, "
                          f"{100 * (1 - s['final_density']):.1f}% sparse)"),
        ("training FLOPs", ratio(s.get("train_flops_x_dense"))),
        ("inference FLOPs", ratio(s.get("inference_flops_x_dense"))),
    ]
    if s.get("step_time_sparse_ms") is not None:
        rows.append(("time per training step", f"{s['step_time_sparse_ms']:.2f} ms sparse / "
                                               f"{s['step_time_dense_ms']:.2f} ms dense = "
                                               f"{s['step_time_x_dense']:.3f}x dense"))
    else:
        rows.append(("time per training step", "not measured (--time-steps 0)"))
    rows += [("mask events", str(s.get("events", 0))),
             ("training time", f"{s['train_time_s']:.1f} s ({s['epochs']} epochs, {s['steps']} steps)")]
    title = (f"granet-train: {s['dataset']} / {s['model']} / {s['method']}  "
             f"({s['device']}, {s['world_size']} process{'es' if s['world_size'] > 1 else ''})")
    w = max(len(k) for k, _ in rows)
    width = max(len(title), max(w + 3 + len(v) for _, v in rows))
    lines = ["=" * width, title, "-" * width]
    lines += [f"{k.ljust(w)}   {v}" for k, v in rows]
    lines += ["-" * width, f"run directory: {s['out']}", "=" * width]
    return "\n".join(lines)


def median(values):
    return statistics.median(values) if values else None
