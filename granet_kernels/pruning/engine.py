"""GraNet: gradual magnitude pruning with zero-cost neuroregeneration on real sparse modules, and the
baselines of the paper (GMP, RigL, SET, static) as options of the same object.

    granet = GraNet(model, optimizer, GraNetConfig(...))
    for x, y in data:
        optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
        granet.step()

See GRANET.md for the algorithm. Layer handling (conversion to sparse modules, repacking, optimizer
state) follows DESIGN.md: the trainable Parameter of a layer keeps its identity across events; its
size changes with the layer's nnz (CSR/BSR), so a DistributedDataParallel wrapper must be rebuilt
when `step()` returns True.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import torch
from torch import nn

from granet_kernels.flops import FlopMeter
from granet_kernels.nn import SparseConv2d, SparseLinear, layer_densities, prunable_layers
from granet_kernels.nn.convert import replace_everywhere
from granet_kernels.pruning import criteria
from granet_kernels.pruning.config import GraNetConfig
from granet_kernels.pruning.grad_capture import DenseGradCapture
from granet_kernels.pruning.optim_state import apply_mask_, check_optimizer, shaped_state, swap_parameter
from granet_kernels.pruning.schedule import Schedule
from granet_kernels.pruning.units import Units

_SPARSE = (SparseLinear, SparseConv2d)


class GraNet:
    """The pruning engine. `step()` after every `optimizer.step()`; `state_dict()` for exact resume.

    On construction the prunable layers of `model` (every nn.Linear and nn.Conv2d with groups=1, see
    `prunable_layers`) become SparseLinear / SparseConv2d in place, the optimizer is pointed at their
    Parameters, and the initial masks are drawn (ERK / ER / uniform at the start density, exact counts,
    seeded by `config.seed`, so every rank draws the same masks).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: GraNetConfig | None = None,
                 **overrides):
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise TypeError("model: pass the unwrapped module to GraNet and wrap it in DistributedDataParallel "
                            "afterwards (GraNet replaces layers, which a DDP wrapper cannot follow)")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        check_optimizer(optimizer)
        if config is None:
            config = GraNetConfig(**overrides)
        elif overrides:
            config = replace(config, **overrides)
        if not isinstance(config, GraNetConfig):
            raise TypeError(f"config must be a GraNetConfig, got {type(config).__name__}")
        config.validate()
        self.model, self.optimizer, self.config = model, optimizer, config
        self.schedule = Schedule(config)
        self.layers = self._convert(model, optimizer)
        if not self.layers:
            raise ValueError("model has no prunable layers (nn.Linear / nn.Conv2d with groups=1 whose weight "
                             "requires grad)")
        self._warn_if_no_event()
        self.units = {name: Units(m.weight_shape, config.block_size) for name, m in self.layers.items()}
        self.initial_densities = self._draw_initial_masks()
        self.flops = FlopMeter(model)
        self.capture = DenseGradCapture(self.layers)
        self.steps = 0
        self.events = 0
        self.prune_events = 0
        self.regrow_events = 0
        self.train_macs = 0.0  # per sample, summed over steps
        self.dense_train_macs = 0.0
        self.density_history: list[tuple[int, float]] = [(0, self.global_density())]
        self.apply_masks_()
        self.capture.arm(self._needs_dense_grad(1))

    # --- setup -------------------------------------------------------------------------------------

    def _warn_if_no_event(self) -> None:
        """A schedule under which the masks never change (typically iters_per_epoch left at 1, so that
        epochs count single steps) trains a static sparse net without saying so."""
        c = self.config
        if c.method == "static":
            return
        steps = range(c.update_frequency, c.total_steps + 1, c.update_frequency)
        if c.method in ("granet", "gmp") and not any(self.schedule.prunes_at(s) for s in steps):
            what, effect = "pruning", "the density stays at init_density"
        elif not any(self.schedule.is_event(s) for s in steps):
            what, effect = "regrowth", "the masks never change"
        else:
            return
        warnings.warn(f"GraNet: no {what} event falls within the {c.total_steps} training steps (total_epochs="
                      f"{c.total_epochs:g} x iters_per_epoch={c.iters_per_epoch}, update_frequency={c.update_frequency}), "
                      f"so {effect}; set iters_per_epoch to the optimizer steps per epoch", RuntimeWarning, stacklevel=3)

    def _layout_for(self, module_is_linear: bool) -> str:
        layout = self.config.layout
        return "auto" if layout == "bsr" and not module_is_linear else layout

    def _convert(self, model: nn.Module, optimizer) -> dict[str, nn.Module]:
        """Plain prunable layers -> sparse modules (all-ones mask for now); optimizer follows."""
        layers = {}
        bsr_block = self.config.block_size if self.config.block_size > 1 else 32
        # A frozen layer (weight without requires_grad) is left as it is: its regrown weights could
        # never train, so each event would only delete some of it.
        prunable = [(name, m) for name, m in prunable_layers(model, dense_first_layer=self.config.dense_first_layer)
                    if m.weight.requires_grad]
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        untrained = [name for name, m in prunable if id(m.weight) not in held]
        if untrained:  # the engine would prune and regrow weights that never train
            raise ValueError(f"optimizer does not hold the weight of layer {untrained[0]!r}"
                             f"{f' (and {len(untrained) - 1} more)' if len(untrained) > 1 else ''}: build it over "
                             "the model's parameters (after any weight tying) before GraNet")
        for name, module in prunable:
            if not isinstance(module, _SPARSE):
                if isinstance(module, nn.Linear):
                    sparse = SparseLinear.from_dense(module, layout="masked", blocksize=bsr_block)
                else:
                    sparse = SparseConv2d.from_dense(module, layout="masked")
                swap_parameter(optimizer, module.weight, sparse.weight, convert=sparse.to_layout)
                if module.bias is not None:
                    swap_parameter(optimizer, module.bias, sparse.bias)
                replace_everywhere(model, module, sparse)
                module = sparse
            module.layout_policy = self._layout_for(isinstance(module, SparseLinear))
            layers[name] = module
        return layers

    def _draw_initial_masks(self) -> dict[str, float]:
        c = self.config
        shapes = [tuple(m.weight_shape) for m in self.layers.values()]
        densities = layer_densities(shapes, c.start_density, c.sparse_init.lower())
        generator = torch.Generator().manual_seed(int(c.seed))
        for (name, module), density in zip(self.layers.items(), densities):
            units = self.units[name]
            count = int(round(density * units.numel))
            mask = units.random_mask(count, generator, module.weight.device)
            old = module.mask
            self._repack(module, mask, keep=old & mask)
        return {name: d for name, d in zip(self.layers, densities)}

    # --- the training-time calls --------------------------------------------------------------------

    def step(self) -> bool:
        """Call after `optimizer.step()`. Zeroes masked weights and their optimizer state, runs the
        pruning / regrowth event when this step is one, and returns True when layers were repacked
        (their Parameters may have changed size: rebuild a DDP wrapper then)."""
        self.steps += 1
        step = self.steps
        self._count_step_flops()
        self.apply_masks_()
        changed = False
        if self.schedule.is_event(step):
            changed = self._event(step)
            self.events += 1
            self.density_history.append((step, self.global_density()))
        self.capture.arm(self._needs_dense_grad(step + 1))
        return changed

    @torch.no_grad()
    def apply_masks_(self) -> None:
        """w <- w * m and optimizer state <- state * m for every layer that stores masked entries."""
        for module in self.layers.values():
            apply_mask_(self.optimizer, module.weight, module.layout_mask())

    def _needs_dense_grad(self, step: int) -> bool:
        c = self.config
        return c.method in ("granet", "rigl") and c.growth == "gradient" and self.schedule.regrows_at(step)

    # --- one event ----------------------------------------------------------------------------------

    @torch.no_grad()
    def _event(self, step: int) -> bool:
        c = self.config
        names = list(self.layers)
        weights = {n: self.layers[n].dense_weight().detach() for n in names}
        masks = {n: self.units[n].mask(self.layers[n].mask) for n in names}
        scores = {n: self.units[n].score(weights[n]) for n in names}
        kept = dict(masks)
        if self.schedule.prunes_at(step):
            kept = self._prune(scores, masks, self.schedule.density_at(step))
            self.prune_events += 1
        new, keep_values = kept, kept
        if self.schedule.regrows_at(step):
            new, after_drop = self._drop_and_regrow(step, scores, kept)
            # the quirk keeps what the drop step removed and regrew, not what pruning removed (zeroed)
            keep_values = after_drop if c.zero_dropped_regrown else {n: kept[n] & new[n] for n in names}
            self.regrow_events += 1
        changed = False
        for n in names:
            # also with the mask unchanged, when weights dropped at this event were regrown in place:
            # they restart at 0 like every regrown weight
            if not torch.equal(new[n], masks[n]) or not torch.equal(keep_values[n] & new[n], new[n]):
                units = self.units[n]
                self._repack(self.layers[n], units.expand(new[n]), keep=units.expand(keep_values[n] & new[n]))
                changed = True
        return changed

    def _prune(self, scores, masks, density: float) -> dict[str, torch.Tensor]:
        """Keep int(N_total * density) units by magnitude, globally or per layer."""
        names = list(scores)
        if self.config.global_prune:
            total = sum(self.units[n].numel for n in names)
            kept = criteria.global_keep([scores[n] for n in names], [masks[n] for n in names], int(total * density))
            return dict(zip(names, kept))
        # Layer-wise: every layer shrinks by the global factor, keeping the initial distribution
        # (uniform when starting dense).
        factor = density / self.config.start_density
        out = {}
        for n in names:
            target = int(self.units[n].numel * min(1.0, self.initial_densities[n] * factor))
            out[n] = criteria.top_active(scores[n], masks[n], target)
        return out

    def _drop_and_regrow(self, step: int, scores, masks):
        rate = self.schedule.prune_rate_at(step)
        growth_scores = self._growth_scores(step)
        new, after_drop = {}, {}
        for n in scores:
            active = int(masks[n].sum())
            drop = math.ceil(rate * active)
            after_drop[n] = criteria.top_active(scores[n], masks[n], active - drop)
            grown = criteria.regrow(growth_scores[n], after_drop[n], drop)
            new[n] = after_drop[n] | grown
        return new, after_drop

    def _growth_scores(self, step: int) -> dict[str, torch.Tensor]:
        c = self.config
        if c.method == "set" or c.growth == "random":
            # Seeded by (seed, step): identical on every rank and after a resume.
            generator = torch.Generator().manual_seed(int(c.seed) * 1_000_003 + step)
            return {n: torch.rand(self.units[n].shape, generator=generator).to(m.weight.device)
                    for n, m in self.layers.items()}
        grads = self.capture.grads
        missing = [n for n in self.layers if n not in grads]
        if missing:
            warnings.warn(f"GraNet: no dense gradient was captured for {', '.join(missing)} at step {step} (were they "
                          f"used in the forward of this step?); regrowth there picks the lowest inactive positions",
                          RuntimeWarning, stacklevel=3)
        out = {}
        for n, m in self.layers.items():
            g = grads.get(n)
            if g is None:
                g = torch.zeros(m.weight_shape, dtype=m.weight.dtype, device=m.weight.device)
            out[n] = g
        _all_reduce_mean(list(out.values()))
        self.capture.grads = {}
        return {n: self.units[n].score(g) for n, g in out.items()}

    @torch.no_grad()
    def _repack(self, module, mask: torch.Tensor, keep: torch.Tensor) -> None:
        """New mask for `module`: values and optimizer state survive where `keep`, are 0 elsewhere."""
        weight = module.weight
        states = {k: module.from_layout(v) for k, v in shaped_state(self.optimizer, weight).items()}
        weight.mul_(module.to_layout(keep.to(weight.dtype)))
        module.set_mask(mask)
        kept = keep & mask
        zero = torch.zeros((), dtype=weight.dtype, device=weight.device)
        state = self.optimizer.state.get(weight)
        for k, dense in states.items():
            state[k] = module.to_layout(torch.where(kept, dense, zero))
        # The gradient of the old layout has the old shape; the next backward starts afresh.
        weight.grad = None

    # --- schedule, report, checkpoint ---------------------------------------------------------------

    def density_at(self, step: int) -> float:
        """Target global density of the schedule after step `step`."""
        return self.schedule.density_at(step)

    def prune_rate_at(self, step: int) -> float:
        """Drop fraction of the regrowth event at step `step` (cosine decay from prune_rate to prune_rate_min)."""
        return self.schedule.prune_rate_at(step)

    def global_density(self) -> float:
        nnz = sum(m.nnz for m in self.layers.values())
        total = sum(math.prod(m.weight_shape) for m in self.layers.values())
        return nnz / total if total else 1.0

    def layer_densities(self) -> dict[str, float]:
        return {n: m.density for n, m in self.layers.items()}

    def _count_step_flops(self) -> None:
        sparse, dense = self.flops.forward_macs()
        self.train_macs += 3 * sparse
        if self.capture.enabled:
            self.train_macs += self.flops.dense_grad_extra_macs()
        self.dense_train_macs += 3 * dense

    def report(self) -> dict:
        """Where the run stands: densities, events done, FLOPs as multiples of dense (per sample, the
        papers' counting: 3x the sparse forward per step, plus the dense dW at event steps)."""
        sparse, dense = self.flops.forward_macs()
        return {
            "step": self.steps,
            "events": self.events,
            "prune_events": self.prune_events,
            "regrow_events": self.regrow_events,
            "global_density": self.global_density(),
            "target_density": self.density_at(self.steps),
            "prune_rate": self.prune_rate_at(self.steps),
            "layer_densities": self.layer_densities(),
            "layer_nnz": {n: m.nnz for n, m in self.layers.items()},
            "layer_layouts": {n: m.layout for n, m in self.layers.items()},
            "inference_flops_x_dense": sparse / dense if dense else 1.0,
            "train_flops_x_dense": self.train_macs / self.dense_train_macs if self.dense_train_macs else sparse / max(dense, 1),
        }

    def state_dict(self) -> dict:
        """The engine's own state; masks and weights live in the model's state_dict, optimizer state
        in the optimizer's. Save all three to resume exactly."""
        return {
            "config": self.config.to_dict(),
            "steps": self.steps,
            "events": self.events,
            "prune_events": self.prune_events,
            "regrow_events": self.regrow_events,
            "train_macs": self.train_macs,
            "dense_train_macs": self.dense_train_macs,
            "density_history": list(self.density_history),
            "flops": self.flops.state_dict(),
            "layers": list(self.layers),
        }

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("config", {})
        current = self.config.to_dict()
        differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if differ:
            raise ValueError(f"GraNet state was saved with a different config ({', '.join(differ)}); "
                             f"build GraNet with the saved config (GraNetConfig.from_dict(state['config']))")
        if list(state.get("layers", [])) != list(self.layers):
            raise ValueError("GraNet state was saved for other layers: "
                             f"{state.get('layers')} vs {list(self.layers)}")
        self.steps = int(state["steps"])
        self.events = int(state["events"])
        self.prune_events = int(state["prune_events"])
        self.regrow_events = int(state["regrow_events"])
        self.train_macs = float(state["train_macs"])
        self.dense_train_macs = float(state["dense_train_macs"])
        self.density_history = [tuple(x) for x in state.get("density_history", [])]
        self.flops.load_state_dict(state.get("flops", {}))
        self.capture.arm(self._needs_dense_grad(self.steps + 1))

    def remove(self) -> None:
        """Detach the engine's hooks from the model (the sparse modules stay)."""
        self.capture.remove()
        self.flops.remove()


def _all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    """Average the dense gradients over the ranks, so every rank regrows the same positions."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(world)
