"""Pictures people would rather look at than read: training curves and evaluation charts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            xs.append(row["step"])
            ys.append(value)
    return xs, ys


def plot_rl_curves(rows: Sequence[dict], out_png: str | Path, title: str = "DeGRPO") -> Path:
    """Think ratio and per-mode accuracy over steps (the paper's U-curve), rewards and tokens beside."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, label in [("think_ratio", "think ratio"), ("accuracy_think", "accuracy (think)"),
                       ("accuracy_short", "accuracy (short)"), ("accuracy", "accuracy (all)")]:
        xs, ys = _series(rows, key)
        axes[0].plot(xs, ys, label=label, linewidth=2 if key == "think_ratio" else 1)
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].set_title("mode choice and accuracy")
    axes[0].legend(loc="best", fontsize=8)
    for key, label in [("reward", "reward mean"), ("groups_all_correct", "groups all correct"),
                       ("groups_all_wrong", "groups all wrong")]:
        xs, ys = _series(rows, key)
        axes[1].plot(xs, ys, label=label)
    axes[1].set_title("reward and group outcomes")
    axes[1].legend(loc="best", fontsize=8)
    for key, label in [("tokens_think", "tokens (think)"), ("tokens_short", "tokens (short)")]:
        xs, ys = _series(rows, key)
        axes[2].plot(xs, ys, label=label)
    axes[2].set_title("mean completion tokens per mode")
    axes[2].legend(loc="best", fontsize=8)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
