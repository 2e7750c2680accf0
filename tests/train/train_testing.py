"""Helpers of the driver tests (a uniquely named module, not a conftest.py, so that no other conftest of
the suite can shadow it): miniature CIFAR copies in the on-disk format, the engine's presence,
subprocess helpers."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def engine_available() -> bool:
    try:
        from granet_kernels import GraNet, GraNetConfig  # noqa: F401
        return True
    except ImportError:
        return False


needs_engine = pytest.mark.skipif(not engine_available(), reason="the GraNet engine (granet_kernels.pruning) is not there yet")


def write_cifar(root, name: str, n_per_batch: int = 20, n_test: int = 20, seed: int = 0, bytes_keys: bool = False):
    """A miniature CIFAR-10 / CIFAR-100 in the python-pickle format torchvision reads."""
    rng = np.random.default_rng(seed)
    classes = 10 if name == "cifar10" else 100
    label_key = "labels" if name == "cifar10" else "fine_labels"

    def batch(n):
        d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key: [int(v) for v in rng.integers(0, classes, n)], "batch_label": "mini"}
        if name == "cifar100":
            d["coarse_labels"] = [int(v) // 5 for v in d[label_key]]
        return {k.encode(): v for k, v in d.items()} if bytes_keys else d

    if name == "cifar10":
        folder = os.path.join(root, "cifar-10-batches-py")
        files = {f"data_batch_{i}": batch(n_per_batch) for i in range(1, 6)}
        files["test_batch"] = batch(n_test)
    else:
        folder = os.path.join(root, "cifar-100-python")
        files = {"train": batch(5 * n_per_batch), "test": batch(n_test)}
    os.makedirs(folder, exist_ok=True)
    for fname, d in files.items():
        with open(os.path.join(folder, fname), "wb") as fh:
            pickle.dump(d, fh, protocol=2)
    return root


def cli_env(threads: int = 1) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(args, cwd=None, timeout=600, **kw):
    return subprocess.run([sys.executable, "-m", "granet_kernels.train", *map(str, args)], cwd=cwd or REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=timeout, **kw)
