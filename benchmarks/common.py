"""Timing and reporting shared by the benchmark scripts (PERFORMANCE.md's protocol)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: str = "cpu") -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[], object]], *, device: str = "cpu", warmup: int = 2, repeats: int = 7,
                     min_seconds: float = 0.0) -> dict[str, float]:
    """Median milliseconds of each function, the functions run in turn (interleaved) so that
    machine noise hits them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    while True:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
        done = min(len(v) for v in times.values())
        if done >= repeats and time.perf_counter() - start >= min_seconds:
            break
    return {name: statistics.median(v) for name, v in times.items()}


def environment(device: str = "cpu") -> dict:
    import granet_kernels
    from granet_kernels.nn import crossover

    vendor, family = crossover.cpu_identity()
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        # "AMD EPYC" names Zen 3 and Zen 5 VMs alike: the family and the kernels' ISA tell them apart.
        "cpu_vendor": vendor,
        "cpu_family": family,
        "cpu_isa": granet_kernels.build_info()["cpu_isa"],
        "auto_crossovers": crossover.cpu_crossovers().measured_on,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)
    print(f"wrote {path}")


def default_result_path(name: str, env: dict) -> str:
    """benchmarks/results/<name>_<device slug>.json, where every benchmark writes by default."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"{name}_{slug(env['device'])}.json")


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()[:40]
