"""`granet-train` (also `python -m granet_kernels.train`): the command line of the training driver.

Every option of TrainConfig is a flag (--init-density, --no-global-prune, ...); --preset NAME and
--config FILE (YAML or TOML) supply values too. Precedence: defaults < preset < config file < flags.
A configuration the run cannot do stops before training with one line saying what to fix (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from granet_kernels.train.checkpoint import find_checkpoint, load_checkpoint
from granet_kernels.train.config import (PRESETS, ConfigError, TrainConfig, build_config, coerce, load_config_file,
                                         preset_values)
from granet_kernels.train.distributed import env_rank

GROUP_TITLES = {"data": "data", "model": "model", "sparsity": "sparsity (GraNet engine)",
                "optimisation": "optimisation", "system": "system and output", "config": "configuration"}

EPILOG = """\
examples:
  granet-train                                   digits, MLP, GraNet to 95%% sparsity (about a minute on 2 cores)
  granet-train --method gmp --final-density 0.02 --out runs/gmp
  granet-train --preset cifar10-resnet50-s2s --data-dir /data/cifar
  torchrun --no-python --nproc_per_node=2 granet-train --out runs/ddp
  granet-train --out runs/gmp --resume           continue a run from its last checkpoint
presets: %s
""" % ", ".join(PRESETS)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise ConfigError(f"{message} (see granet-train --help)")


def _default_text(f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if default is None or f.name == "preset":
        return ""
    if isinstance(default, list):
        default = ",".join(map(str, default)) or "none"
    if isinstance(default, bool):
        default = "on" if default else "off"
    return f" (default: {default})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="granet-train", description="Train a model with GraNet (or a baseline) on real sparse kernels; "
                     "writes a run directory with the resolved config, metrics (CSV, JSON), checkpoints, plots and "
                     "summary.json, and prints a final table.", epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS)
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        help_text = meta["help"] + _default_text(f)
        group = groups[meta["group"]]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif meta.get("kind") == "resume":
            group.add_argument(flag, nargs="?", const="auto", metavar=meta.get("metavar"), help=help_text)
        else:
            metavar = "{" + ",".join(meta["choices"]) + "}" if meta.get("choices") else meta.get("metavar")
            group.add_argument(flag, metavar=metavar, help=help_text)
    cfg_group = groups["config"]
    cfg_group.add_argument("--config", metavar="FILE", help="YAML (.yaml/.yml) or TOML (.toml) file of options "
                           "(keys as the flags, - or _; the run directory's config.yaml is one)")
    cfg_group.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    cfg_group.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    return parser


RUNTIME = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("runtime")}


def resolve(argv=None) -> tuple[TrainConfig, dict | None, argparse.Namespace]:
    """Parse the command line into a validated TrainConfig (and the checkpoint to resume from)."""
    args = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k not in ("config", "list_presets", "print_config")}
    file_values = load_config_file(args.config) if getattr(args, "config", None) else {}
    cli_values = {k: coerce(k, v, "command line") for k, v in given.items()}
    preset = cli_values.get("preset", file_values.get("preset"))
    values = {}
    if preset:
        values.update(preset_values(preset))
        values["preset"] = preset
    values.update(file_values)
    values.update(cli_values)
    explicit = set(values)
    cfg = build_config(values)
    resume_state = None
    if cfg.resume is not None:
        if cfg.out is None and cfg.resume != "auto":
            cfg.out = os.path.dirname(os.path.abspath(cfg.resume)) if os.path.isfile(cfg.resume) else cfg.resume
        out = cfg.out or cfg.default_out()
        path = find_checkpoint(cfg.resume, out)
        resume_state = load_checkpoint(path)
        cfg = _merge_for_resume(cfg, explicit, resume_state["config"], path)
        cfg.out = out
    cfg.validate()
    if cfg.out is None:
        cfg.out = cfg.default_out()
    return cfg, resume_state, args


def _merge_for_resume(cfg: TrainConfig, explicit: set, saved: dict, path: str) -> TrainConfig:
    """The saved run's configuration, with the runtime options of this command; an explicit option
    that would change the training itself is an error."""
    saved = {k: v for k, v in saved.items() if k in TrainConfig.field_names()}
    current = cfg.to_dict()
    conflicts = [f"--{k.replace('_', '-')} {current[k]} (checkpoint: {saved.get(k)})" for k in sorted(explicit)
                 if k not in RUNTIME and k in saved and current[k] != saved[k]]
    if conflicts:
        raise ConfigError(f"{path} was written with other settings: {'; '.join(conflicts)}; drop these flags to "
                          "resume, or start a new run with another --out")
    merged = dict(saved)
    for k in RUNTIME:
        merged[k] = current[k]
    return build_config(merged)


def main(argv=None) -> int:
    try:
        cfg, resume_state, args = resolve(argv)
        if getattr(args, "list_presets", False):
            for name, (text, _) in PRESETS.items():
                print(f"{name:26s} {text}")
            return 0
        if getattr(args, "print_config", False):
            import json
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        from granet_kernels.train.loop import run
        run(cfg, resume_state)
    except ConfigError as error:
        if env_rank() == 0:
            print(f"granet-train: error: {error}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("granet-train: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
