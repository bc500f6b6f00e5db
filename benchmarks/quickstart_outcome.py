"""Does the model learn when to think? The learning-outcome benchmark for the mini-world quickstart.

    python benchmarks/quickstart_outcome.py            # DeGRPO and vanilla GRPO, same budget, seed 0
    python benchmarks/quickstart_outcome.py --only degrpo --seed 1

Runs ``thinkless-lite quickstart`` from the shipped base on this machine (2 CPU cores here) with
``rl.decoupled=true`` and again with ``rl.decoupled=false``, then prints the issue's targets with
PASS/MISS and writes ``runs/benchmark/outcome.{json,md}`` plus both runs' curves. Not a test: the
numbers are reported as measured, including when a target is missed.

Targets (DeGRPO run): wall time <= 10 min; auto accuracy >= forced-think accuracy - 2 points;
think ratio <= 10% at the easiest level and >= 90% at the hardest; auto mean tokens <= 50% of
forced think on the default difficulty mix.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from thinkless_lite.config import load_config
from thinkless_lite.stages.quickstart import main as quickstart


def targets(report: dict) -> list[tuple[str, float, str, bool]]:
    auto, think = report["auto"], report["think"]
    levels = sorted(auto["by_difficulty"], key=int)
    easiest, hardest = auto["by_difficulty"][levels[0]], auto["by_difficulty"][levels[-1]]
    token_share = auto["on_mix"]["mean_tokens"] / think["on_mix"]["mean_tokens"]
    gap_mix = 100 * (auto["on_mix"]["accuracy"] - think["on_mix"]["accuracy"])
    gap_levels = 100 * (auto["accuracy"] - think["accuracy"])
    return [
        ("wall time (min)", report["wall_time_seconds"] / 60, "<= 10", report["wall_time_seconds"] <= 600),
        ("auto acc - think acc, default mix (points)", gap_mix, ">= -2", gap_mix >= -2),
        ("auto acc - think acc, every level equally (points)", gap_levels, ">= -2", gap_levels >= -2),
        (f"think ratio at k={levels[0]}", easiest["think_ratio"], "<= 0.10", easiest["think_ratio"] <= 0.10),
        (f"think ratio at k={levels[-1]}", hardest["think_ratio"], ">= 0.90", hardest["think_ratio"] >= 0.90),
        ("auto tokens / think tokens, default mix", token_share, "<= 0.50", token_share <= 0.50),
    ]


def describe(name: str, report: dict) -> str:
    rows = [f"### {name}", "", "| measure | value | target | |", "|---|---|---|---|"]
    for label, value, goal, ok in targets(report):
        rows.append(f"| {label} | {value:.3f} | {goal} | {'PASS' if ok else 'MISS'} |")
    auto = report["auto"]
    rows += ["", "| mode | accuracy (mix) | think ratio (mix) | mean tokens (mix) | accuracy (levels) | mean tokens (levels) |",
             "|---|---|---|---|---|---|"]
    for mode in ("auto", "think", "short"):
        s, m = report[mode], report[mode]["on_mix"]
        rows.append(f"| {mode} | {m['accuracy']:.3f} | {m['think_ratio']:.3f} | {m['mean_tokens']:.1f} | "
                    f"{s['accuracy']:.3f} | {s['mean_tokens']:.1f} |")
    rows += ["", "auto think ratio by level: " + ", ".join(
        f"k={k}: {v['think_ratio']:.2f}" for k, v in sorted(auto["by_difficulty"].items(), key=lambda kv: int(kv[0])))]
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mini.yaml")
    parser.add_argument("--out", default="runs/benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["degrpo", "vanilla"], help="run one of the two")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    out = Path(args.out)
    results, sections = {}, []
    runs = [("degrpo", "true"), ("vanilla", "false")]
    for name, decoupled in runs:
        if args.only and args.only != name:
            continue
        cfg = load_config(args.config, [f"seed={args.seed}", f"output_dir={out}", f"name={name}",
                                        f"rl.decoupled={decoupled}", *args.overrides])
        quickstart(cfg)
        report = json.loads((cfg.run_dir / "report.json").read_text())
        results[name] = {"report": report, "targets": [
            {"measure": m, "value": v, "target": t, "pass": ok} for m, v, t, ok in targets(report)]}
        sections.append(describe(f"{name} (rl.decoupled={decoupled}, alpha={cfg.rl.alpha:g}, seed {args.seed})", report))
    text = "\n\n".join(sections)
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "outcome.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "outcome.md").write_text(text + "\n")
    print(f"\nwritten: {out / 'outcome.md'}; curves: {out}/<run>/rl/curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
