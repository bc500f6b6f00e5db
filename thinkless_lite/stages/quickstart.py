"""The whole pipeline on one recipe: warm-up, evaluation, DeGRPO, evaluation (+ the think-threshold sweep).

    thinkless-lite quickstart                      # the mini-world on CPU, minutes: runs/quickstart
    thinkless-lite quickstart --config smollm2_135m_cpu --out runs/smollm2

Writes ``<run>/warmup/`` and ``<run>/rl/`` (adapters, metrics, curves), ``<run>/warmup/eval/`` and
``<run>/eval/`` (records and reports), and ``<run>/report.{json,md,png}``: the final evaluation, plus
(in the JSON) the one after the warm-up, the last training metrics and the wall times.
"""

from __future__ import annotations

import dataclasses
import time

from thinkless_lite.config import RunConfig, save_resolved
from thinkless_lite.report import markdown_tables, write_report


def _with_adapter(cfg: RunConfig, adapter) -> RunConfig:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, adapter_path=str(adapter)))


def main(cfg: RunConfig, *, skip_warmup: bool = False) -> dict:
    """Run every stage; returns the report's paths, the wall time and the final evaluation per mode."""
    from thinkless_lite.stages import rl, warmup
    from thinkless_lite.stages.evaluate import evaluate
    from thinkless_lite.stages.setup import prepare_stage

    began = time.time()
    out = prepare_stage(cfg)  # the backend first: the checks below import TRL
    # Both stages' TRL settings and the RL questions, before the warm-up trains for minutes.
    warmup.sft_config(cfg, out / "warmup" / "checkpoints")
    rl.grpo_config(cfg, out / "rl" / "checkpoints")
    rl.rl_items(cfg)
    timings = {}

    t = time.time()
    warm_adapter = out / "warmup" / "adapter"
    if skip_warmup and (warm_adapter / "adapter_config.json").exists():
        warm_summary = {"adapter": str(warm_adapter), "skipped": True}
    else:
        warm_summary = warmup.main(cfg)
    save_resolved(cfg, out)  # once the warm-up ran: a start that fails leaves no run folder behind
    timings["warmup"] = round(time.time() - t, 1)
    after_warmup = evaluate(_with_adapter(cfg, warm_adapter), out_dir=out / "warmup" / "eval",
                            modes=("think", "short", "auto"), sweep=False)
    print("\n".join(["after the warm-up (held-out questions)", *markdown_tables(after_warmup, sweeps=False)]))

    t = time.time()
    rl_summary = rl.main(_with_adapter(cfg, warm_adapter))
    timings["rl"] = round(time.time() - t, 1)

    t = time.time()
    final = evaluate(_with_adapter(cfg, rl_summary["adapter"]), out_dir=out / "eval")
    timings["eval"] = round(time.time() - t, 1)
    title = "after DeGRPO" if cfg.rl.decoupled else "after vanilla GRPO"
    print("\n".join([f"{title} (held-out questions)", *markdown_tables(final)]))

    report = {"final": final, "after_warmup": after_warmup, "training": rl_summary["final"],
              "decoupled": cfg.rl.decoupled, "alpha": cfg.rl.alpha, "warmup": warm_summary,
              "rl": {k: v for k, v in rl_summary.items() if k != "final"}, "timings_seconds": timings,
              "wall_time_seconds": round(time.time() - began, 1)}
    footer = (f"Wall time: {report['wall_time_seconds'] / 60:.1f} min (warm-up {timings['warmup']:.0f} s, "
              f"{title.split()[-1]} {timings['rl']:.0f} s, evaluation {timings['eval']:.0f} s). "
              "Training curves: rl/curves.png")
    paths = write_report(final, out, saved=report, footer=footer)  # report.md / report.png show the final evaluation
    print(f"report: {paths['md']}  curves: {out / 'rl' / 'curves.png'}")
    return {"report": str(paths["json"]), "wall_time_seconds": report["wall_time_seconds"],
            "final": dict(final["benchmarks"])}
