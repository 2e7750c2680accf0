"""The training driver, `granet-train` (also `python -m granet_kernels.train`): CLI and config
(presets, YAML/TOML files), data (digits embedded; CIFAR and ImageNet from local folders), models,
the training loop with checkpoints and exact resume, torchrun/DDP, metrics, plots and the final table.

    from granet_kernels.train import TrainConfig, run
    summary = run(TrainConfig(epochs=5, out="runs/try"))
"""

from granet_kernels.train.config import PRESETS, ConfigError, TrainConfig


def run(cfg, resume_state=None):
    """Train as `cfg` (a TrainConfig) says; returns the summary dict (also written to summary.json)."""
    from granet_kernels.train.loop import run as _run
    return _run(cfg, resume_state)


def main(argv=None) -> int:
    """The `granet-train` command line; returns the exit status."""
    from granet_kernels.train.cli import main as _main
    return _main(argv)


__all__ = ["TrainConfig", "ConfigError", "PRESETS", "run", "main"]
