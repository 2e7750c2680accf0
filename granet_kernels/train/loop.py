"""The run: build data, model, optimizer and the GraNet engine; train with per-epoch validation,
metrics, checkpoints and exact resume; then test, FLOPs, step timing, summary, plots.

Determinism: the initial weights come from --seed; the data order of epoch e from a
DistributedSampler seeded with (seed, e); augmentation from (seed, e, rank); the global torch RNG
(dropout) is reseeded from (seed, e) at the start of every epoch. Checkpoints are written at epoch
ends, so a resumed run repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from granet_kernels.train import checkpoint as ckpt
from granet_kernels.train import distributed as D
from granet_kernels.train import report as R
from granet_kernels.train.config import ConfigError, TrainConfig
from granet_kernels.train.data import build_data, check_data, derived_seed
from granet_kernels.train.models import build_model

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


# --- optimizer and learning rate -----------------------------------------------------------------------

def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    if cfg.bn_weight_decay or cfg.weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
    decay, no_decay = [], []
    for mod in model.modules():
        for pname, p in mod.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (no_decay if isinstance(mod, NORM_TYPES) or pname == "bias" else decay).append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_at(step: int, cfg: TrainConfig, iters_per_epoch: int) -> float:
    """Learning rate before optimizer step `step` (0-based): linear warm-up, then cosine / step / constant."""
    total = cfg.epochs * iters_per_epoch
    warm = int(round(cfg.warmup_epochs * iters_per_epoch))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.lr_schedule == "cosine":
        t = (step - warm) / max(1, total - warm)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if cfg.lr_schedule == "step":
        epoch = step // iters_per_epoch
        return cfg.lr * cfg.lr_gamma ** sum(1 for m in cfg.lr_milestones if epoch >= m)
    return cfg.lr


# --- the engine ---------------------------------------------------------------------------------------

def make_engine(model, optimizer, cfg: TrainConfig, iters_per_epoch: int):
    try:
        from granet_kernels import GraNet, GraNetConfig
    except ImportError:
        raise ConfigError(f"--method {cfg.method} needs the GraNet engine (granet_kernels.pruning), which this "
                          "installation lacks; use --method dense") from None
    fixed = cfg.method in ("rigl", "set", "static")
    wanted = dict(method=cfg.method, init_density=cfg.final_density if fixed else cfg.init_density,
                  final_density=cfg.final_density, sparse_init=cfg.sparse_init,
                  init_prune_epoch=cfg.init_prune_epoch, final_prune_epoch=cfg.resolved_final_prune_epoch,
                  total_epochs=cfg.epochs, iters_per_epoch=iters_per_epoch, update_frequency=cfg.update_frequency,
                  prune_rate=cfg.prune_rate, prune_rate_min=cfg.prune_rate_min, global_prune=cfg.global_prune,
                  block_size=cfg.block_size, dense_first_layer=cfg.dense_first_layer,
                  growth="random" if cfg.method == "set" else cfg.growth, layout=cfg.layout, seed=cfg.seed)
    if dataclasses.is_dataclass(GraNetConfig):
        known = {f.name for f in dataclasses.fields(GraNetConfig)}
        wanted = {k: v for k, v in wanted.items() if k in known}
    try:
        gcfg = GraNetConfig(**wanted)
        with warnings.catch_warnings():
            # _check_schedule says this as an error naming the flags
            warnings.filterwarnings("ignore", message="GraNet: no pruning event", category=RuntimeWarning)
            return GraNet(model, optimizer, gcfg)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"the GraNet engine rejected the configuration: {' '.join(str(error).split())}") from None


def _check_schedule(granet, cfg: TrainConfig, iters: int, log) -> None:
    """Stop when no pruning event fits the schedule; say so when it ends off the target density."""
    if cfg.method not in ("granet", "gmp") or cfg.init_density == cfg.final_density:
        return
    end = float(granet.density_at(cfg.epochs * iters))
    window = (cfg.resolved_final_prune_epoch - cfg.init_prune_epoch) * iters
    if end >= cfg.init_density:
        raise ConfigError(f"no pruning event fits the schedule: events come every --update-frequency "
                          f"{cfg.update_frequency} steps and the pruning window, epochs {cfg.init_prune_epoch:g} to "
                          f"{cfg.resolved_final_prune_epoch:g} at {iters} steps each ({window:g} steps), holds none "
                          "(the last event before tf is not a pruning one); lower --update-frequency or widen "
                          "--init-prune-epoch/--final-prune-epoch")
    if end - cfg.final_density > 0.005:
        log(f"note: the pruning schedule ends at density {end:.4f}, not {cfg.final_density:g} (the cubic schedule "
            f"stops one event before --final-prune-epoch); a lower --update-frequency gets closer")


def engine_report(granet) -> dict:
    try:
        return dict(granet.report())
    except Exception:  # an engine without report(): the driver's own numbers are used
        return {}


# --- one process's run ---------------------------------------------------------------------------------

class Logger:
    def __init__(self, out: str | None, enabled: bool):
        self.enabled = enabled
        self.path = os.path.join(out, "train.log") if (out and enabled) else None

    def __call__(self, msg: str, file=None):
        if not self.enabled:
            return
        try:
            from tqdm import tqdm
            tqdm.write(msg, file=file or sys.stdout)
        except ImportError:
            print(msg, file=file or sys.stdout, flush=True)
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(msg + "\n")


def _autocast_factory(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "off":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, info: D.DistInfo, autocast) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, count = 0.0, 0.0, 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            out = model(x)
        loss_sum += float(F.cross_entropy(out.float(), y, reduction="sum"))
        correct += float((out.argmax(1) == y).sum())
        count += y.numel()
    loss_sum, correct, count = D.all_reduce_sum([loss_sum, correct, count], device, info)
    return loss_sum / max(count, 1), correct / max(count, 1)


def run(cfg: TrainConfig, resume_state: dict | None = None) -> dict:
    """Train as `cfg` says (single process, or one process of a torchrun job); returns the summary."""
    cfg.validate()
    info, device = D.init_distributed(cfg.device)
    try:
        return _run(cfg, resume_state, info, device)
    finally:
        D.shutdown()


def _run(cfg: TrainConfig, resume_state, info: D.DistInfo, device: torch.device) -> dict:
    wall0 = time.perf_counter()
    out = cfg.out or cfg.default_out()
    ckpt.check_writable(out)
    check_data(cfg)
    log = Logger(out, info.is_main)
    if info.is_main and resume_state is None and os.path.exists(os.path.join(out, ckpt.CHECKPOINT)):
        log(f"note: {out} holds an earlier run; starting fresh and overwriting it (--resume continues a run)")
        for stale in ("train.log", "metrics.csv", "metrics.json", "summary.json"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(out, stale))
    threads = cfg.threads or (1 if cfg.dataset == "digits" else 0)
    if threads:
        torch.set_num_threads(threads)
    autocast = _autocast_factory(cfg, device)

    data = build_data(cfg, info.rank, info.world_size)
    iters = len(data.train)
    model_name = cfg.resolved_model
    torch.manual_seed(cfg.seed)
    model = build_model(model_name, cfg.dataset, data.info.num_classes, data.info.input_shape,
                        hidden=cfg.mlp_hidden, dropout=cfg.dropout)
    model = model.to(device)
    optimizer = make_optimizer(model, cfg)
    granet = make_engine(model, optimizer, cfg, iters) if cfg.sparse else None
    if granet is not None:
        _check_schedule(granet, cfg, iters, log)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None

    start_epoch, step, history, elapsed_before = 0, 0, [], 0.0
    density_trace = [(0, _density(model, granet))]
    if resume_state is not None:
        if granet is not None:
            granet.load_state_dict(resume_state["granet"])
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        start_epoch, step = resume_state["epoch"], resume_state["step"]
        history, density_trace = list(resume_state["history"]), [tuple(t) for t in resume_state["density_trace"]]
        elapsed_before = resume_state.get("train_time_s", 0.0)
        log(f"resumed {out} at epoch {start_epoch}/{cfg.epochs} (step {step})")
    net = D.wrap(model, info, device)

    if info.is_main:
        ckpt.write_json(os.path.join(out, "config.json"), cfg.to_dict())
        _write_yaml(os.path.join(out, "config.yaml"), cfg.to_dict())
        log(f"granet-train: {cfg.dataset} ({data.info.n_train} train / {data.info.n_val} val / {data.info.n_test} test)"
            f", {model_name}, {cfg.method}" + ("" if not cfg.sparse else f" {cfg.init_density:g} -> {cfg.final_density:g}")
            + f", {cfg.epochs} epochs x {iters} steps, {device}" + (f", {info.world_size} processes" if info.enabled else "")
            + f" -> {out}")

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    density = density_trace[-1][1]
    train_time = elapsed_before
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch = time.perf_counter()
        net.train()
        data.train.set_epoch(epoch)
        torch.manual_seed(derived_seed(cfg.seed, epoch, 101))
        bar = None
        if tqdm is not None and cfg.progress and info.is_main:
            bar = tqdm(total=iters, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True, disable=None,
                       file=sys.stderr, mininterval=0.5)
        loss_sum = correct = count = 0.0
        events_before = len(density_trace)
        for x, y in data.train:
            lr = lr_at(step, cfg, iters)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast():
                logits = net(x)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            step += 1
            with torch.no_grad():
                loss_sum += float(loss) * y.numel()
                correct += float((logits.argmax(1) == y).sum())
                count += y.numel()
            # Drop the graph before the engine repacks: a live graph keeps the weights' gradient
            # accumulators, which remember the old parameter shapes.
            del logits, loss
            if granet is not None and granet.step():
                density = _density(model, granet)
                density_trace.append((step, density))
                if info.enabled:
                    # Parameter sizes may have changed (CSR repack): a new DDP wrapper. The old one's
                    # reducer holds the parameters' gradient accumulators, which remember the old
                    # shapes, so it must be collected before the new wrapper makes fresh ones.
                    del net
                    gc.collect()
                    net = D.wrap(model, info, device)
                    net.train()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{correct / count:.3f}", density=f"{density:.3f}",
                                refresh=False)
        if bar is not None:
            bar.close()
        loss_sum, correct, count = D.all_reduce_sum([loss_sum, correct, count], device, info)
        val_loss, val_acc = evaluate(model, data.val, device, info, autocast)
        train_time += time.perf_counter() - t_epoch
        row = dict(epoch=epoch + 1, step=step, lr=lr_at(max(step - 1, 0), cfg, iters),
                   train_loss=loss_sum / count, train_acc=correct / count, val_loss=val_loss, val_acc=val_acc,
                   density=density, events=len(density_trace) - 1, epoch_events=len(density_trace) - events_before,
                   epoch_time_s=time.perf_counter() - t_epoch, train_time_s=train_time)
        history.append(row)
        if info.is_main:
            log(f"epoch {epoch + 1:>3}/{cfg.epochs}  loss {row['train_loss']:.4f}  acc {row['train_acc']:.4f}  "
                f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  density {density:.4f}  lr {row['lr']:.4g}  "
                f"{row['epoch_time_s']:.1f}s")
            ckpt.write_csv(os.path.join(out, "metrics.csv"), history)
            ckpt.write_json(os.path.join(out, "metrics.json"), {"epochs": history, "density_trace": density_trace})
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                state = dict(config=cfg.to_dict(), epoch=epoch + 1, step=step, model=model.state_dict(),
                             optimizer=optimizer.state_dict(), granet=None if granet is None else granet.state_dict(),
                             scaler=None if scaler is None else scaler.state_dict(),
                             history=history, density_trace=density_trace, train_time_s=train_time)
                ckpt.save_checkpoint(state, os.path.join(out, ckpt.CHECKPOINT))
        info.barrier()

    # --- the end: test, FLOPs, timing, summary, plots -------------------------------------------------
    val_loss, val_acc = evaluate(model, data.val, device, info, autocast)
    test_loss, test_acc = evaluate(model, data.test, device, info, autocast)
    rep = engine_report(granet) if granet is not None else {}
    layer_d = R.layer_densities_of(model)
    final_density = float(rep.get("global_density", _density(model, granet))) if granet is not None else 1.0

    summary = dict(val_accuracy=val_acc, test_accuracy=test_acc, final_density=final_density,
                   train_flops_x_dense=None, inference_flops_x_dense=None, step_time_x_dense=None,
                   target_density=1.0 if not cfg.sparse else cfg.final_density,
                   val_loss=val_loss, test_loss=test_loss,
                   best_val_accuracy=max([h["val_acc"] for h in history], default=val_acc),
                   dataset=cfg.dataset, model=model_name, method=cfg.method, epochs=cfg.epochs, steps=step,
                   iters_per_epoch=iters, events=len(density_trace) - 1, seed=cfg.seed, device=str(device),
                   world_size=info.world_size, train_time_s=train_time, out=out)
    if info.is_main:
        x, y = data.sample_batch(max(1, cfg.batch_size // info.world_size))
        x, y = x.to(device), y.to(device)
        if cfg.sparse:
            sparse_f, dense_f = R.measured_inference_flops(model, x)
            measured = sparse_f / dense_f if dense_f else None
            summary.update(
                train_flops_x_dense=float(rep["train_flops_x_dense"]) if "train_flops_x_dense" in rep else None,
                inference_flops_x_dense=float(rep.get("inference_flops_x_dense", measured)),
                inference_flops_x_dense_measured=measured,
                layer_densities=layer_d, layer_layouts=rep.get("layer_layouts"),
                engine_report={k: v for k, v in rep.items() if k not in ("layer_densities", "layer_layouts",
                                                                         "layer_nnz")})
        else:
            summary.update(train_flops_x_dense=1.0, inference_flops_x_dense=1.0, layer_densities={})
        if cfg.time_steps > 0:
            if not cfg.sparse:
                summary.update(step_time_x_dense=1.0)
            ts, td = R.time_training_steps(model, lambda m: make_optimizer(m, cfg), x, y, cfg.time_steps, device,
                                           autocast)
            if cfg.sparse:
                summary.update(step_time_x_dense=ts / td)
            summary.update(step_time_sparse_ms=1e3 * ts, step_time_dense_ms=1e3 * td)
        summary["wall_clock_s"] = elapsed_before + (time.perf_counter() - wall0)
        ckpt.write_json(os.path.join(out, "summary.json"), summary)
        if cfg.plots:
            schedule = []
            if granet is not None and hasattr(granet, "density_at"):
                total = cfg.epochs * iters
                for s in sorted(set(range(0, total + 1, max(1, total // 400))) | {total}):
                    with contextlib.suppress(Exception):
                        schedule.append((s, float(granet.density_at(s))))
            title = f"{cfg.dataset} / {model_name} / {cfg.method}"
            trace = density_trace + [(step, density_trace[-1][1])]
            from granet_kernels.train.plots import write_plots
            write_plots(out, history, trace, schedule, layer_d, title)
        log(R.format_table(summary))
        sys.stdout.flush()
    if cfg.save_rank_masks:  # for checking that the processes of a distributed run agree
        masks = {name: m.mask.cpu() for name, m in R.sparse_modules(model)}
        state = {k: v.cpu() for k, v in model.state_dict().items()}
        torch.save({"masks": masks, "state_dict": state, "step": step},
                   os.path.join(out, f"masks_rank{info.rank}.pt"))
    info.barrier()
    return summary


def _density(model: nn.Module, granet) -> float:
    if granet is None:
        return 1.0
    return R.global_density_of(model)


def _write_yaml(path: str, values: dict) -> None:
    try:
        import yaml
    except ImportError:
        return
    ckpt.write_text(path, "# resolved configuration of this run (granet-train --config accepts this file)\n"
                    + yaml.safe_dump(values, sort_keys=False))
