"""Does the model learn when to think? The learning-outcome benchmark for the mini-world quickstart.

    python benchmarks/quickstart_outcome.py            # DeGRPO and vanilla GRPO, same budget, seed 0
    python benchmarks/quickstart_outcome.py --only degrpo --seed 1

Runs ``thinkless-lite quickstart`` from the shipped base on this machine (2 CPU cores here) with
``rl.decoupled=true`` and again as vanilla GRPO (``rl.decoupled=false``, and the mode-choice rule off: no forced
modes, no centring, no threshold), then prints the issue's targets with
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

from outcome import describe, targets  # benchmarks/outcome.py

from thinkless_lite.config import load_config
from thinkless_lite.stages.quickstart import main as quickstart

WALL_MINUTES = 10


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="mini")
    parser.add_argument("--out", default="runs/benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["degrpo", "vanilla"], help="run one of the two")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    out = Path(args.out)
    results, sections = {}, []
    # Vanilla GRPO as the paper compares it: the loss not decoupled, and none of our mode-choice rule either.
    vanilla = ["rl.decoupled=false", "rl.mode_balance=0", "rl.mode_centering=0", "rl.mode_threshold_lr=0",
               "rl.within_mode_advantages=false"]
    runs = [("degrpo", ["rl.decoupled=true"]), ("vanilla", vanilla)]
    for name, settings in runs:
        if args.only and args.only != name:
            continue
        decoupled = "true" if name == "degrpo" else "false"
        cfg = load_config(args.config, [f"seed={args.seed}", f"output_dir={out}", f"name={name}", *settings,
                                        *args.overrides])
        quickstart(cfg)
        report = json.loads((cfg.run_dir / "report.json").read_text())
        routing = dict(table=cfg.rl.reward, mix=cfg.miniworld.difficulty_weights)
        results[name] = {"report": report, "targets": [
            {"measure": m, "value": v, "target": t, "pass": ok} for m, v, t, ok in targets(report, WALL_MINUTES, **routing)]}
        sections.append(describe(f"{name} (rl.decoupled={decoupled}, alpha={cfg.rl.alpha:g}, seed {args.seed})",
                                 report, WALL_MINUTES, **routing))
    text = "\n\n".join(sections)
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "outcome.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "outcome.md").write_text(text + "\n")
    print(f"\nwritten: {out / 'outcome.md'}; curves: {out}/<run>/rl/curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
