"""The one report schema and its one renderer: Markdown tables, the figures, the training curves.

An evaluation report (``thinkless_lite.stages.evaluate``; its numbers from :mod:`thinkless_lite.summaries`) is::

    {"model", "adapter", "settings", "num_items", "seconds", "out_dir",
     "benchmarks": {name: {mode: summary}},      # mode: auto | think | short | tau=<value>
     "tau_sweeps": {name: [point, ...]}}          # cheapest first; forced short is {"tau": None, "mode": "short"}

and a summary is ``{n, accuracy, think_ratio, mean_tokens, format_error_rate, tokens_saved_vs_think,
by_difficulty: {level: {n, accuracy, think_ratio, mean_tokens}}, on_mix?: {accuracy, think_ratio,
mean_tokens}}`` (``on_mix``: the mini-world's levels weighted by its difficulty mix). The console, the
``report.md`` file, the quickstart and the exported model card all render it with :func:`markdown_tables`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from thinkless_lite.summaries import level_order

MODE_ORDER = ("auto", "think", "short")


def _pct(value) -> str:
    return "—" if not isinstance(value, (int, float)) else f"{100 * value:.1f}%"


def _num(value) -> str:
    return "—" if not isinstance(value, (int, float)) else f"{value:.1f}"


def _modes(per_mode: dict) -> list[str]:
    return [m for m in MODE_ORDER if m in per_mode] + [m for m in per_mode if m not in MODE_ORDER]


def markdown_tables(report: dict, by_difficulty: bool = True, sweeps: bool = True) -> list[str]:
    """Markdown lines: per benchmark, a table by mode (and the difficulty mix where there is one), a table
    by difficulty for every mode, and the think-threshold sweep. Pure; no report, no numbers."""
    lines: list[str] = []
    for name, per_mode in report.get("benchmarks", {}).items():
        modes = _modes(per_mode)
        lines += [f"### {name}", "", "| mode | n | accuracy | think ratio | mean tokens | tokens saved vs think | "
                  "format errors |", "|---|---:|---:|---:|---:|---:|---:|"]
        for mode in modes:
            s = per_mode[mode]
            lines.append(f"| {mode} | {s.get('n', '—')} | {_pct(s.get('accuracy'))} | {_pct(s.get('think_ratio'))} | "
                         f"{_num(s.get('mean_tokens'))} | {_pct(s.get('tokens_saved_vs_think'))} | "
                         f"{_pct(s.get('format_error_rate'))} |")
        mixed = [m for m in modes if per_mode[m].get("on_mix")]
        if mixed:
            lines += ["", "Weighted by the difficulty mix the questions are drawn from:", "",
                      "| mode | accuracy | think ratio | mean tokens |", "|---|---:|---:|---:|"]
            lines += [f"| {m} | {_pct(per_mode[m]['on_mix']['accuracy'])} | {_pct(per_mode[m]['on_mix']['think_ratio'])} "
                      f"| {_num(per_mode[m]['on_mix']['mean_tokens'])} |" for m in mixed]
        levelled = {m: per_mode[m]["by_difficulty"] for m in modes if per_mode[m].get("by_difficulty")}
        if by_difficulty and levelled:
            levels = sorted({level for by in levelled.values() for level in by}, key=level_order)
            lines += ["", f"**{name} by difficulty** (accuracy / think ratio / mean tokens)", "",
                      "| level | n | " + " | ".join(levelled) + " |", "|---:|---:|" + "---:|" * len(levelled)]
            for level in levels:
                n = next((by[level]["n"] for by in levelled.values() if level in by), 0)
                cells = [f"{_pct(by[level]['accuracy'])} / {_pct(by[level]['think_ratio'])} / "
                         f"{_num(by[level]['mean_tokens'])}" if level in by else "—" for by in levelled.values()]
                lines.append(f"| {level} | {n} | " + " | ".join(cells) + " |")
        points = report.get("tau_sweeps", {}).get(name) or []
        if sweeps and points:
            lines += ["", f"**{name}: think-threshold sweep** (think when P(<think>) >= tau)", "",
                      "| tau | n | accuracy | think ratio | mean tokens |", "|---|---:|---:|---:|---:|"]
            lines += [f"| {'forced short' if p.get('tau') is None else format(p['tau'], 'g')} | {p.get('n', '—')} | "
                      f"{_pct(p.get('accuracy'))} | {_pct(p.get('think_ratio'))} | {_num(p.get('mean_tokens'))} |"
                      for p in points]
        lines.append("")
    return lines


def render_markdown(report: dict) -> str:
    """A whole ``report.md``: what was evaluated, how the numbers are defined, then the tables."""
    facts = [f"{key}: `{report[key]}`" for key in ("model", "adapter") if report.get(key)]
    if report.get("settings"):
        facts.append(", ".join(f"{k}={v}" for k, v in report["settings"].items()))
    if report.get("seconds") is not None:
        facts.append(f"{report['seconds']:.0f} s")
    return "\n".join(["# Evaluation report", "", "; ".join(facts), "",
                      "accuracy = share of answers graded correct (answer read after `</think>` / `<short>`); "
                      "think ratio = share of answers that chose `<think>`; tokens saved = 1 - mean tokens / mean "
                      "tokens of forced think.", "", *markdown_tables(report)])


def _grouped_bars(ax, benchmarks: dict[str, dict], key: str, title: str) -> None:
    names = list(benchmarks)
    modes = list(dict.fromkeys(m for per_mode in benchmarks.values() for m in per_mode))
    width = 0.8 / max(len(modes), 1)
    for j, mode in enumerate(modes):
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(names))]
        ys = [benchmarks[n].get(mode, {}).get(key, 0.0) for n in names]
        ax.bar(xs, ys, width=width, label=mode)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8)


def plot_report(report: dict, path: str | Path) -> Path:
    """Accuracy and think ratio by mode; the accuracy-vs-tokens curve; think ratio by difficulty."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, safe in threads and servers

    benchmarks = report.get("benchmarks", {})
    sweeps = {name: points for name, points in report.get("tau_sweeps", {}).items() if points}
    by_level = {name: (per_mode.get("auto") or next(iter(per_mode.values())))
                for name, per_mode in benchmarks.items() if per_mode}
    by_level = {name: s["by_difficulty"] for name, s in by_level.items() if s.get("by_difficulty")}
    panels = ["accuracy", "think_ratio"] + (["sweep"] if sweeps else []) + (["difficulty"] if by_level else [])
    ncols = 2
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(6 * ncols, 4.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        if panel == "accuracy":
            _grouped_bars(ax, benchmarks, "accuracy", "Accuracy by mode")
        elif panel == "think_ratio":
            _grouped_bars(ax, benchmarks, "think_ratio", "Think ratio by mode")
        elif panel == "sweep":
            for name, points in sweeps.items():
                points = sorted(points, key=lambda p: p["mean_tokens"])
                line = ax.plot([p["mean_tokens"] for p in points], [p["accuracy"] for p in points], "o-", label=name)[0]
                for p in points:
                    label = "short" if p.get("tau") is None else f"τ={p['tau']:g}"
                    ax.annotate(label, (p["mean_tokens"], p["accuracy"]), textcoords="offset points", xytext=(4, 4),
                                fontsize=7)
                auto = benchmarks.get(name, {}).get("auto")
                if auto:
                    ax.plot([auto["mean_tokens"]], [auto["accuracy"]], "*", markersize=12, color=line.get_color(),
                            label=f"{name}: sampled choice")
            ax.set_xlabel("mean generated tokens")
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.05)
            ax.set_title("Think-threshold trade-off")
            ax.legend(fontsize=8)
        elif panel == "difficulty":
            for name, levels in by_level.items():
                xs = [level_order(k)[1] if level_order(k)[0] == 0 else i for i, k in enumerate(levels)]
                ax.plot(xs, [d["think_ratio"] for d in levels.values()], "o-", label=name)
            ax.set_xlabel("difficulty level")
            ax.set_ylabel("think ratio")
            ax.set_ylim(-0.02, 1.05)
            ax.set_title("Think ratio by difficulty (auto)")
            ax.legend(fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def write_report(report: dict, out_dir: str | Path, *, saved: dict | None = None, footer: str = "") -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.png`` into ``out_dir``; return their paths.

    ``saved``: what ``report.json`` holds when it is more than the evaluation (the quickstart's run report,
    which embeds it); ``footer``: a last paragraph for ``report.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    paths["json"].write_text(json.dumps(report if saved is None else saved, indent=2, ensure_ascii=False, default=str)
                             + "\n", encoding="utf-8")
    paths["md"].write_text(render_markdown(report) + (f"\n\n{footer}" if footer else "") + "\n", encoding="utf-8")
    plot_report(report, paths["png"])
    return paths


# ---------------------------------------------------------------- training curves

def _series(rows: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            xs.append(row["step"])
            ys.append(value)
    return xs, ys


def plot_rl_curves(rows: Sequence[dict], out_png: str | Path, title: str = "DeGRPO") -> Path:
    """Think ratio and per-mode accuracy over steps (the paper's U-curve), rewards and tokens beside (with the
    share of each mode's answers cut off at the training cap: where it is high, the cap speaks, not the reward),
    and the policy's P(<think>) per difficulty level: where routing by difficulty emerges, or a collapse shows."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, safe in threads and servers

    levels = sorted({key.split("/k", 1)[1] for row in rows for key in row if key.startswith("p_think/k")},
                    key=level_order)
    fig = Figure(figsize=(20 if levels else 15, 4), layout="constrained")
    axes = fig.subplots(1, 4 if levels else 3)
    for key, label in [("think_ratio", "think ratio"), ("accuracy_think", "accuracy (think)"),
                       ("accuracy_short", "accuracy (short)"), ("accuracy", "accuracy (all)")]:
        xs, ys = _series(rows, key)
        axes[0].plot(xs, ys, label=label, linewidth=2 if key == "think_ratio" else 1)
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].set_title("mode choice and accuracy")
    axes[0].legend(loc="best", fontsize=8)
    for key, label in [("reward", "reward mean"), ("groups_all_correct", "groups all correct"),
                       ("groups_all_wrong", "groups all wrong"), ("clipped/think", "cut off at the cap (think)"),
                       ("clipped/short", "cut off at the cap (short)")]:
        xs, ys = _series(rows, key)
        if xs or not key.startswith("clipped/"):  # runs logged before the cut-off share existed lack it
            axes[1].plot(xs, ys, label=label, linestyle=":" if key.startswith("clipped/") else "-")
    axes[1].set_title("reward, group outcomes, cut-off answers")
    axes[1].legend(loc="best", fontsize=8)
    for key, label in [("tokens_think", "tokens (think)"), ("tokens_short", "tokens (short)")]:
        xs, ys = _series(rows, key)
        axes[2].plot(xs, ys, label=label)
    axes[2].set_title("mean completion tokens per mode")
    axes[2].legend(loc="best", fontsize=8)
    if levels:
        for level in levels:
            xs, ys = _series(rows, f"p_think/k{level}")
            axes[3].plot(xs, ys, label=f"k={level}", linewidth=2)
        axes[3].set_ylim(-0.02, 1.02)
        axes[3].set_title("P(<think>) by difficulty")
        axes[3].legend(loc="best", fontsize=8)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png
