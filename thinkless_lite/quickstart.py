"""The mini-world pipeline end to end: warm-up, DeGRPO, evaluation on the held-out split.

    thinkless-lite quickstart --out runs/quickstart

Writes ``<out>/report.json`` (auto / forced think / forced short: accuracy, think ratio, mean
tokens, each by difficulty; the training metrics' final values; wall time), ``<out>/report.md``,
``<out>/report.png`` and ``<out>/rl/curves.png``. Runs on 2 CPU cores in minutes.
"""

from __future__ import annotations

import dataclasses
import json
import time

import torch

from thinkless_lite.config import RunConfig, save_resolved
from thinkless_lite.infer import SamplingSettings


def evaluate_adapter(cfg: RunConfig, adapter: str | None, modes=("auto", "think", "short"), tau_sweep=()) -> dict:
    """Held-out mini-world evaluation of an adapter: {mode: summary} (+ ``tau_sweep``)."""
    from thinkless_lite.data.miniworld import benchmark_items
    from thinkless_lite.evaluate import evaluate_items, summarize
    from thinkless_lite.evaluate import tau_sweep as sweep
    from thinkless_lite.model import load_model
    from thinkless_lite.warmup import mini_world

    loaded = load_model(dataclasses.replace(cfg.model, adapter_path=adapter), trainable=False, seed=cfg.seed)
    items = benchmark_items(per_level=cfg.eval.per_level, world=mini_world(cfg))
    settings = SamplingSettings(max_new_tokens=cfg.eval.max_new_tokens, temperature=cfg.eval.temperature,
                                top_p=cfg.eval.top_p, seed=cfg.seed)
    common = dict(settings=settings, tokens=cfg.model.control_tokens, system_prompt=cfg.model.system_prompt,
                  batch_size=cfg.eval.batch_size, benchmark="miniworld")
    out = {}
    for mode in modes:
        records = evaluate_items(loaded.model, loaded.tokenizer, items, mode=mode, **common)
        out[mode] = summarize(records)
        out[mode]["on_mix"] = mix_weighted(out[mode], cfg.miniworld.difficulty_weights)
    if tau_sweep:
        out["tau_sweep"] = sweep(loaded.model, loaded.tokenizer, items, list(tau_sweep), **common)
    return out


def mix_weighted(summary: dict, weights: dict) -> dict:
    """Per-level figures re-weighted by the difficulty mix: what a user drawing from the mix would see.

    The held-out set has the same number of questions at every level (so hard levels are measured
    as precisely as easy ones); the mix is what training and the token budget are about.
    """
    levels = summary.get("by_difficulty", {})
    total = sum(float(w) for k, w in weights.items() if str(k) in levels)
    if not total:
        return {}
    return {key: sum(float(w) * levels[str(k)][key] for k, w in weights.items() if str(k) in levels) / total
            for key in ("accuracy", "think_ratio", "mean_tokens")}


def format_mode_table(results: dict, title: str) -> str:
    """Accuracy / think ratio / tokens by difficulty for each mode, as a fixed-width table."""
    modes = [m for m in ("auto", "think", "short") if m in results]
    levels = sorted({lvl for m in modes for lvl in results[m].get("by_difficulty", {})}, key=lambda x: int(x))
    lines = [title, f"{'level':>6} " + " ".join(f"{m + ' acc':>10} {m + ' think':>11} {m + ' tok':>9}" for m in modes)]
    for lvl in levels + ["all"]:
        cells = []
        for m in modes:
            s = results[m] if lvl == "all" else results[m]["by_difficulty"].get(lvl, {})
            cells.append(f"{s.get('accuracy', float('nan')):>10.1%} {s.get('think_ratio', float('nan')):>11.1%} "
                         f"{s.get('mean_tokens', float('nan')):>9.1f}")
        lines.append(f"{lvl:>6} " + " ".join(cells))
    if all("on_mix" in results[m] for m in modes):
        lines.append(f"{'mix':>6} " + " ".join(
            f"{results[m]['on_mix']['accuracy']:>10.1%} {results[m]['on_mix']['think_ratio']:>11.1%} "
            f"{results[m]['on_mix']['mean_tokens']:>9.1f}" for m in modes) + "   (weighted by the difficulty mix)")
    if "auto" in results:
        lines.append(f"auto mode: a valid control token first on {1 - results['auto'].get('format_error_rate', 0):.1%} "
                     "of test prompts (format errors count as invalid)")
    return "\n".join(lines)


def main(cfg: RunConfig, *, skip_warmup: bool = False) -> dict:
    from thinkless_lite import rl, warmup
    from thinkless_lite.evaluate import write_report

    began = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = cfg.run_dir
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out)
    timings = {}

    t = time.time()
    warm_adapter = out / "warmup" / "adapter"
    if skip_warmup and (warm_adapter / "adapter_config.json").exists():
        warm_summary = {"adapter": str(warm_adapter), "skipped": True}
    else:
        warm_summary = warmup.main(cfg)
    timings["warmup"] = round(time.time() - t, 1)
    warm_eval = evaluate_adapter(cfg, str(warm_adapter), modes=("think", "short", "auto"))
    print(format_mode_table(warm_eval, "after warm-up (held-out mini-world)"))

    t = time.time()
    rl_summary = rl.main(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, adapter_path=str(warm_adapter))))
    timings["rl"] = round(time.time() - t, 1)

    t = time.time()
    final = evaluate_adapter(cfg, rl_summary["adapter"], tau_sweep=tuple(cfg.eval.sweep_tau))
    timings["eval"] = round(time.time() - t, 1)
    print(format_mode_table(final, "after DeGRPO (held-out mini-world)" if cfg.rl.decoupled else "after vanilla GRPO"))

    report = {name: final[name] for name in ("auto", "think", "short")}
    if "tau_sweep" in final:
        report["tau_sweep"] = final["tau_sweep"]
    report.update({
        "benchmarks": {"miniworld": {m: final[m] for m in ("auto", "think", "short")}},
        "after_warmup": warm_eval, "training": rl_summary["final"], "decoupled": cfg.rl.decoupled,
        "alpha": cfg.rl.alpha, "warmup": warm_summary, "rl": {k: v for k, v in rl_summary.items() if k != "final"},
        "timings_seconds": timings, "wall_time_seconds": round(time.time() - began, 1),
    })
    write_report(report, out)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"report: {out / 'report.json'}  curves: {out / 'rl' / 'curves.png'}")
    return {"report": str(out / "report.json"), "wall_time_seconds": report["wall_time_seconds"],
            "auto": report["auto"], "think": report["think"], "short": report["short"]}
