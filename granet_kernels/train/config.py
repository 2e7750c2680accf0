"""The driver's configuration: one dataclass, its defaults and help texts, the paper's presets, config
files (YAML or TOML) and the checks that stop a bad configuration before any training starts.

Precedence, lowest first: the defaults below < `--preset` < `--config FILE` < flags on the command line.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any


class ConfigError(Exception):
    """A configuration the driver cannot run; the message says what to fix (printed on one line)."""


DATASETS = ("digits", "cifar10", "cifar100", "imagenet")
MODELS = ("auto", "mlp", "cnn", "vgg19", "resnet50")
METHODS = ("granet", "gmp", "rigl", "set", "static", "dense")
SPARSE_INITS = ("ERK", "ER", "uniform")
GROWTHS = ("gradient", "random")
LAYOUTS = ("auto", "masked", "csr", "bsr")
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("cosine", "step", "constant")
AMPS = ("off", "bf16", "fp16")

# Which models suit which data (the input shape differs).
MODELS_FOR = {"digits": ("mlp", "cnn"), "cifar10": ("mlp", "cnn", "vgg19", "resnet50"),
              "cifar100": ("mlp", "cnn", "vgg19", "resnet50"), "imagenet": ("resnet50",)}
DEFAULT_MODEL = {"digits": "mlp", "cifar10": "resnet50", "cifar100": "resnet50", "imagenet": "resnet50"}


def _f(default, help: str, group: str, *, choices=None, flag=None, kind=None, metavar=None, runtime=False):
    """A config field: default, help text, argparse group, allowed values. `runtime` fields do not
    change the training result (device, logging...) and may differ when a run is resumed."""
    meta = dict(help=help, group=group, choices=choices, flag=flag, kind=kind, metavar=metavar, runtime=runtime)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # --- data -------------------------------------------------------------------------------------
    dataset: str = _f("digits", "data set: digits (scikit-learn's, embedded, no download), cifar10, cifar100 "
                      "(python pickle batches under --data-dir), imagenet (ImageFolder train/ and val/ under --data-dir)",
                      "data", choices=DATASETS)
    data_dir: str = _f("data", "folder holding cifar-10-batches-py/, cifar-100-python/ or the ImageNet train/ and val/ "
                       "folders (nothing is downloaded)", "data", metavar="DIR")
    val_size: float | None = _f(None, "validation images held out of the training set: a count, or a fraction if < 1 "
                                "(default: digits a fixed 15%% split; CIFAR 5000; ImageNet 10000; at most 10%% of a "
                                "smaller training set)", "data", kind=float, metavar="N")
    augment: bool = _f(True, "random crop + horizontal flip on CIFAR/ImageNet (digits: none)", "data")
    num_workers: int = _f(0, "DataLoader worker processes (ImageNet only; the others are in memory)", "data",
                          metavar="N", runtime=True)
    # --- model ------------------------------------------------------------------------------------
    model: str = _f("auto", "model: mlp, cnn (digits, CIFAR), vgg19, resnet50 (CIFAR variants as in the paper; ImageNet: "
                    "torchvision's ResNet-50 when installed); auto = mlp for digits, resnet50 otherwise",
                    "model", choices=MODELS)
    mlp_hidden: int = _f(1024, "hidden width of the MLP (64 -> H -> H -> 10)", "model", metavar="H")
    dropout: float = _f(0.0, "dropout before the MLP's / CNN's hidden layers", "model", metavar="P")
    # --- sparsity ---------------------------------------------------------------------------------
    method: str = _f("granet", "granet (prune + regrow), gmp (prune only), rigl / set (dynamic sparse at "
                     "--final-density, gradient / random growth), static (fixed random mask at --final-density), "
                     "dense (no sparsity)", "sparsity", choices=METHODS)
    init_density: float = _f(0.5, "initial density d_i (1.0 = dense-to-sparse); granet and gmp only", "sparsity",
                             metavar="D")
    final_density: float = _f(0.05, "final density d_f (0.05 = 95%% sparsity)", "sparsity", metavar="D")
    sparse_init: str = _f("ERK", "initial per-layer densities: ERK, ER or uniform", "sparsity", choices=SPARSE_INITS)
    update_frequency: int = _f(10, "iterations between mask updates (Delta T)", "sparsity", metavar="STEPS")
    prune_rate: float = _f(0.5, "initial prune-and-regrow rate r0 (cosine-decayed)", "sparsity", metavar="R")
    prune_rate_min: float = _f(0.005, "final prune-and-regrow rate", "sparsity", metavar="R")
    init_prune_epoch: float = _f(0, "epoch of the first pruning event (t0)", "sparsity", kind=float, metavar="EPOCH")
    final_prune_epoch: float | None = _f(None, "epoch at which gradual pruning ends (tf; default: half of --epochs)",
                                         "sparsity", kind=float, metavar="EPOCH")
    global_prune: bool = _f(True, "global magnitude pruning across layers (--no-global-prune: layer-wise)", "sparsity")
    dense_first_layer: bool = _f(False, "keep the first layer dense", "sparsity")
    growth: str = _f("gradient", "regrowth criterion: gradient or random", "sparsity", choices=GROWTHS)
    block_size: int = _f(1, "prune and regrow blocks of this size (1 = unstructured)", "sparsity", metavar="B")
    layout: str = _f("auto", "sparse layout of the pruned layers: auto (by density), masked, csr, bsr", "sparsity",
                     choices=LAYOUTS)
    # --- optimisation -----------------------------------------------------------------------------
    epochs: int = _f(20, "training epochs", "optimisation", metavar="N")
    batch_size: int = _f(64, "global batch size (split across torchrun processes)", "optimisation", metavar="N")
    eval_batch_size: int = _f(512, "batch size for validation and test", "optimisation", metavar="N", runtime=True)
    optimizer: str = _f("sgd", "sgd (momentum), adam or adamw", "optimisation", choices=OPTIMIZERS)
    lr: float = _f(0.1, "peak learning rate", "optimisation", metavar="LR")
    momentum: float = _f(0.9, "SGD momentum", "optimisation", metavar="M")
    nesterov: bool = _f(True, "Nesterov momentum (SGD)", "optimisation")
    weight_decay: float = _f(5e-4, "weight decay", "optimisation", metavar="WD")
    bn_weight_decay: bool = _f(True, "apply weight decay to BatchNorm parameters and biases too", "optimisation")
    lr_schedule: str = _f("cosine", "learning-rate schedule after warm-up: cosine (to 0), step (x --lr-gamma at "
                          "--lr-milestones), constant", "optimisation", choices=LR_SCHEDULES)
    lr_milestones: list = _f([], "epochs at which the step schedule multiplies the lr by --lr-gamma, e.g. 80,120",
                             "optimisation", kind="intlist", metavar="E1,E2")
    lr_gamma: float = _f(0.1, "factor of the step schedule", "optimisation", metavar="G")
    warmup_epochs: float = _f(0, "linear learning-rate warm-up, in epochs", "optimisation", kind=float, metavar="E")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy loss", "optimisation", metavar="EPS")
    # --- system -----------------------------------------------------------------------------------
    device: str = _f("auto", "auto (cuda when available), cpu, cuda, cuda:N (under torchrun: each process's local GPU)",
                     "system", runtime=True)
    amp: str = _f("off", "mixed precision: off (float32), bf16 or fp16 autocast (fp16 with a gradient scaler, GPU "
                  "only); --method dense only for now (the sparse modules do not take autocast inputs yet)",
                  "system", choices=AMPS)
    threads: int = _f(0, "CPU threads per process; 0 = auto: 1 for digits (its small layers gain nothing from more, "
                      "and lose much on a busy machine), torch's default otherwise", "system", metavar="N",
                      runtime=True)
    seed: int = _f(0, "random seed (weights, masks, data order, augmentation, dropout)", "system", metavar="S")
    out: str | None = _f(None, "run directory (default: runs/<dataset>-<model>-<method>-d<final density>-s<seed>)",
                         "system", metavar="DIR", runtime=True)
    resume: str | None = _f(None, "resume from the last checkpoint of --out (or of the run directory / checkpoint file "
                            "given)", "system", kind="resume", metavar="PATH", runtime=True)
    checkpoint_every: int = _f(5, "write a checkpoint every N epochs (and always at the end)", "system",
                               metavar="N", runtime=True)
    progress: bool = _f(True, "tqdm progress bars", "system", runtime=True)
    plots: bool = _f(True, "write PNG plots to the run directory", "system", runtime=True)
    time_steps: int = _f(20, "training steps timed for the sparse-vs-dense step-time comparison (0 = skip)",
                         "system", metavar="N", runtime=True)
    save_rank_masks: bool = _f(False, "every process writes its final masks to masks_rank<R>.pt (checks that "
                               "distributed ranks agree)", "system", runtime=True)
    # --- where the values came from (filled by the CLI) ---------------------------------------------
    preset: str | None = _f(None, "start from a named preset (see --list-presets)", "config", metavar="NAME",
                            runtime=True)

    # ------------------------------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def resolved_model(self) -> str:
        return DEFAULT_MODEL.get(self.dataset, "mlp") if self.model == "auto" else self.model

    @property
    def resolved_final_prune_epoch(self) -> float:
        return self.epochs / 2 if self.final_prune_epoch is None else self.final_prune_epoch

    @property
    def sparse(self) -> bool:
        return self.method != "dense"

    def default_out(self) -> str:
        d = "1" if self.method == "dense" else f"{self.final_density:g}"
        return os.path.join("runs", f"{self.dataset}-{self.resolved_model}-{self.method}-d{d}-s{self.seed}")

    def validate(self) -> "TrainConfig":
        """Raise ConfigError (one line, saying what to fix) for anything the run cannot do."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):  # nan passes every comparison
                raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got {value!r}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                flag = "--" + f.name.replace("_", "-")
                raise ConfigError(f"unknown {f.name.replace('_', ' ')} {value!r} for {flag}; choose one of: "
                                  f"{', '.join(choices)}")
        model = self.resolved_model
        if model not in MODELS_FOR[self.dataset]:
            raise ConfigError(f"model {model!r} does not fit dataset {self.dataset!r}; use --model "
                              f"{' or '.join(MODELS_FOR[self.dataset])}")
        for name in ("init_density", "final_density"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 < v <= 1.0 and math.isfinite(v)):
                raise ConfigError(f"--{name.replace('_', '-')} must be in (0, 1], got {v!r}")
        if self.method in ("granet", "gmp") and self.final_density > self.init_density:
            raise ConfigError(f"--final-density ({self.final_density:g}) must not exceed --init-density "
                              f"({self.init_density:g}) for method {self.method}")
        _positive_int(self.epochs, "--epochs")
        _positive_int(self.batch_size, "--batch-size")
        _positive_int(self.eval_batch_size, "--eval-batch-size")
        _positive_int(self.update_frequency, "--update-frequency")
        _positive_int(self.checkpoint_every, "--checkpoint-every")
        _positive_int(self.block_size, "--block-size")
        _positive_int(self.mlp_hidden, "--mlp-hidden")
        for name, v in (("--time-steps", self.time_steps), ("--threads", self.threads),
                        ("--num-workers", self.num_workers)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be > 0, got {self.lr!r}")
        for name, v, lo, hi in (("--prune-rate", self.prune_rate, 0.0, 1.0), ("--prune-rate-min", self.prune_rate_min, 0.0, 1.0),
                                ("--dropout", self.dropout, 0.0, 0.99), ("--label-smoothing", self.label_smoothing, 0.0, 0.99),
                                ("--momentum", self.momentum, 0.0, 0.999), ("--lr-gamma", self.lr_gamma, 0.0, 1.0)):
            if not lo <= v <= hi:
                raise ConfigError(f"{name} must be in [{lo:g}, {hi:g}], got {v!r}")
        if self.prune_rate_min > self.prune_rate:
            raise ConfigError(f"--prune-rate-min ({self.prune_rate_min:g}) must not exceed --prune-rate ({self.prune_rate:g})")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay!r}")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise ConfigError(f"--warmup-epochs must be in [0, --epochs={self.epochs}), got {self.warmup_epochs:g}")
        t0, tf = self.init_prune_epoch, self.resolved_final_prune_epoch
        if t0 < 0:
            raise ConfigError(f"--init-prune-epoch must be >= 0, got {t0:g}")
        if tf < t0:
            raise ConfigError(f"--final-prune-epoch ({tf:g}) must not be before --init-prune-epoch ({t0:g})")
        if tf > self.epochs:
            raise ConfigError(f"--final-prune-epoch ({tf:g}) must not be after the last epoch (--epochs {self.epochs})")
        if any((not isinstance(m, int)) or m <= 0 or m >= self.epochs for m in self.lr_milestones):
            raise ConfigError(f"--lr-milestones must be epochs in (0, {self.epochs}), got {self.lr_milestones}")
        if self.val_size is not None and not self.val_size > 0:
            raise ConfigError(f"--val-size must be > 0 (a count, or a fraction < 1), got {self.val_size!r}")
        if self.layout == "bsr" and self.resolved_model != "mlp":
            raise ConfigError("--layout bsr is available for linear layers only; use it with --model mlp or pick auto")
        if self.amp != "off" and self.method != "dense":
            raise ConfigError(f"--amp {self.amp} works with --method dense only for now: the sparse modules take "
                              "inputs in their weights' dtype (no autocast yet); use --amp off")
        if self.amp == "fp16" and self.device == "cpu":
            raise ConfigError("--amp fp16 needs a GPU; use --amp bf16 on the CPU")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"unknown device {dev!r}; use auto, cpu, cuda or cuda:N")
        return self


def _positive_int(v, name):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(f"{name} must be a positive integer, got {v!r}")


# --- presets: the paper's settings (GRANET.md, "Paper settings") ------------------------------------

_CIFAR = dict(data_dir="data", augment=True, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
              batch_size=128, epochs=160, lr_schedule="step", lr_milestones=[80, 120], lr_gamma=0.1,
              init_prune_epoch=0, final_prune_epoch=80, update_frequency=1000, prune_rate=0.5,
              prune_rate_min=0.005, sparse_init="ERK", method="granet", global_prune=True, val_size=5000)
_IMAGENET = dict(dataset="imagenet", model="resnet50", augment=True, optimizer="sgd", lr=0.1, momentum=0.9,
                 nesterov=True, weight_decay=1e-4, bn_weight_decay=False, batch_size=128, epochs=100,
                 lr_schedule="step", lr_milestones=[30, 60, 90], lr_gamma=0.1, warmup_epochs=5,
                 label_smoothing=0.1, init_prune_epoch=0, final_prune_epoch=30, update_frequency=4000,
                 prune_rate=0.5, prune_rate_min=0.005, sparse_init="ERK", method="granet", global_prune=True,
                 final_density=0.2, val_size=10000, num_workers=8)

PRESETS: dict[str, tuple[str, dict]] = {}


def _preset(name, text, **values):
    PRESETS[name] = (text, values)


_preset("digits", "the default run: MLP on scikit-learn's digits, GraNet to 95% sparsity (the defaults)")
for _d2s, _di, _what in (("s2s", 0.5, "sparse-to-sparse, ERK d_i=0.5"), ("d2s", 1.0, "dense-to-sparse, d_i=1")):
    _preset(f"cifar10-resnet50-{_d2s}", f"ResNet-50 on CIFAR-10, 95% sparsity, {_what}, 160 epochs",
            dataset="cifar10", model="resnet50", final_density=0.05, init_density=_di, **_CIFAR)
    _preset(f"cifar100-vgg19-{_d2s}", f"VGG-19 on CIFAR-100, 98% sparsity, {_what}, 160 epochs",
            dataset="cifar100", model="vgg19", final_density=0.02, init_density=_di, **_CIFAR)
    _preset(f"imagenet-resnet50-{_d2s}", f"ResNet-50 on ImageNet, 80% sparsity, {_what}, 100 epochs, 5 warm-up",
            init_density=_di, **_IMAGENET)
for _name in ("cifar10-resnet50", "cifar100-vgg19", "imagenet-resnet50"):
    PRESETS[_name] = (PRESETS[_name + "-s2s"][0] + " (= " + _name + "-s2s)", PRESETS[_name + "-s2s"][1])


def preset_values(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name][1])


# --- config files ------------------------------------------------------------------------------------

def load_config_file(path: str) -> dict:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file (or JSON) into {field: value}; keys may use - or _,
    and may sit at the top level or under a [train] table."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found; pass an existing .yaml/.toml file to --config")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError("reading a YAML config needs PyYAML (pip install pyyaml), or use a .toml file") from None
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
        elif ext == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                try:
                    import tomli as tomllib
                except ImportError:
                    raise ConfigError("reading a TOML config on Python 3.10 needs tomli (pip install tomli), "
                                      "or use a .yaml file") from None
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        elif ext == ".json":
            with open(path) as fh:
                data = json.load(fh)
        else:
            raise ConfigError(f"config file {path!r}: unknown extension {ext!r}; use .yaml, .yml, .toml or .json")
    except ConfigError:
        raise
    except Exception as error:  # parse errors of the three formats
        msg = " ".join(str(error).split())
        raise ConfigError(f"config file {path!r} could not be parsed: {msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of option: value")
    if "train" in data and isinstance(data["train"], dict):
        data = {**{k: v for k, v in data.items() if k != "train"}, **data["train"]}
    return normalize_keys(data, f"config file {path!r}")


def normalize_keys(data: dict, where: str) -> dict:
    names = set(TrainConfig.field_names())
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "config":
            continue
        if name not in names:
            raise ConfigError(f"{where}: unknown option {key!r} (see granet-train --help for the options)")
        out[name] = coerce(name, value, where)
    return out


def coerce(name: str, value: Any, where: str = "") -> Any:
    """Convert a value from a config file or preset to the field's type."""
    f = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    kind = f.metadata.get("kind")
    prefix = f"{where}: " if where else ""
    try:
        if value is None:
            return None
        if kind == "intlist" or isinstance(default, list):
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v]
            if not isinstance(value, (list, tuple)):
                value = [value]
            return [int(v) for v in value]
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                return value.lower() in ("true", "yes", "on", "1")
            raise ValueError(value)
        if kind is float or isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError(value)
            v = float(value)
            return int(v) if kind is float and v.is_integer() and name.endswith("_epoch") else v
        if isinstance(default, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{prefix}option {name.replace('_', '-')} has a bad value {value!r}") from None


def build_config(values: dict) -> TrainConfig:
    try:
        return TrainConfig(**values)
    except TypeError as error:
        raise ConfigError(str(error)) from None
