"""PNG plots of a run (matplotlib, Agg backend): accuracy and loss per epoch, global density over
steps (measured and scheduled), final density per layer."""

from __future__ import annotations

import os


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def write_plots(out: str, history: list[dict], density_trace: list[tuple[int, float]],
                schedule: list[tuple[int, float]], layer_densities: dict[str, float], title: str) -> list[str]:
    """Write accuracy.png, loss.png, density.png, layer_density.png into `out`; returns their paths."""
    try:
        plt = _plt()
    except ImportError:
        return []
    written = []
    epochs = [h["epoch"] for h in history]

    def save(fig, name):
        path = os.path.join(out, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_acc"] for h in history], label="train")
    ax.plot(epochs, [h["val_acc"] for h in history], label="validation")
    ax.set_xlabel("epoch"), ax.set_ylabel("accuracy"), ax.set_title(title), ax.grid(alpha=0.3), ax.legend()
    save(fig, "accuracy.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax.set_xlabel("epoch"), ax.set_ylabel("cross-entropy loss"), ax.set_title(title), ax.grid(alpha=0.3), ax.legend()
    save(fig, "loss.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    if schedule:
        ax.plot([s for s, _ in schedule], [d for _, d in schedule], "--", color="gray", label="schedule")
    if density_trace:
        ax.step([s for s, _ in density_trace], [d for _, d in density_trace], where="post", label="measured")
    ax.set_xlabel("training step"), ax.set_ylabel("global density"), ax.set_ylim(0, 1.05)
    ax.set_title(title), ax.grid(alpha=0.3), ax.legend()
    save(fig, "density.png")

    if layer_densities:
        names = list(layer_densities)
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 4.5))
        ax.bar(range(len(names)), [layer_densities[n] for n in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=75, ha="right", fontsize=7)
        ax.set_ylabel("final density"), ax.set_ylim(0, 1.05), ax.set_title(title + ": density per layer")
        ax.grid(alpha=0.3, axis="y")
        save(fig, "layer_density.png")
    return written
