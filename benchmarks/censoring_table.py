"""Cut-off thinking answers, censored or scored wrong: the table of docs/results/censoring_mini.md (not a test).

Reads mini-world runs trained with a completion cap below the chains of the hardest levels, and prints per level:
the share of forced-think answers longer than the cap (measured on the warm-up's evaluation records, greedy, at
the evaluation's uncut budget), the share of each mode's answers cut off during RL (``clipped_think/k<level>``,
``clipped_short/k<level>`` in ``rl/metrics.jsonl``; runs from before censoring lack them), auto's think ratio
after RL, and the mode the reward oracle picks from the run's own forced-mode accuracies on uncut answers
(``benchmarks/outcome.reward_oracle``). Then, on the recipe's difficulty mix, auto's accuracy against the oracle's.

    python benchmarks/censoring_table.py --cap 104 uncut=/work/runs/qs_90 off=/work/runs/t4_off on=/work/runs/t4_on
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from outcome import reward_oracle  # noqa: E402

from thinkless_lite.config import load_config  # noqa: E402


def final_report(run: Path) -> dict:
    """The run's final miniworld evaluation: a quickstart's report.json, else the eval stage's."""
    for path in (run / "report.json", run / "eval" / "report.json"):
        if path.is_file():
            data = json.loads(path.read_text())
            return (data.get("final") or data)["benchmarks"]["miniworld"]
    raise FileNotFoundError(f"{run}: no report.json (the run has not finished its evaluation)")


def think_lengths_over(run: Path, cap: int) -> dict[str, float]:
    """Per level, the share of the warm-up's forced-think answers (greedy, uncut) with more than ``cap`` tokens."""
    over: dict[str, list[bool]] = {}
    for line in (run / "warmup" / "eval" / "records.jsonl").open(encoding="utf-8"):
        record = json.loads(line)
        if record["requested"] == "think":
            over.setdefault(str(record["difficulty"]), []).append(record["num_tokens"] >= cap)
    return {level: sum(flags) / len(flags) for level, flags in over.items()}


def clipped_in_training(run: Path, mode: str) -> dict[str, float]:
    """Per level, the mean over steps of the share of ``mode``'s answers cut off at the cap during RL."""
    sums: dict[str, list[float]] = {}
    metrics = run / "rl" / "metrics.jsonl"
    for line in metrics.open(encoding="utf-8") if metrics.is_file() else []:
        for key, value in json.loads(line).items():
            if key.startswith(f"clipped_{mode}/k") and isinstance(value, (int, float)) and math.isfinite(value):
                sums.setdefault(key.split("/k", 1)[1], []).append(value)
    return {level: sum(values) / len(values) for level, values in sums.items()}


def table(runs: dict[str, Path], cap: int, config: str = "mini") -> str:
    cfg = load_config(config)
    mix, rewards = cfg.miniworld.difficulty_weights, cfg.rl.reward
    finals = {name: final_report(run) for name, run in runs.items()}
    over = think_lengths_over(next(iter(runs.values())), cap)
    levels = sorted(over, key=float)
    clipped = {name: (clipped_in_training(run, "think"), clipped_in_training(run, "short")) for name, run in runs.items()}
    head = ["level", "forced-think answers >= cap (warm-up, greedy)"]
    for name in runs:
        head += [f"{name}: cut off in RL (think / short)", f"{name}: auto think ratio", f"{name}: oracle"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    oracles = {name: reward_oracle(final, rewards, mix) for name, final in finals.items()}

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.0f}%"

    for level in levels:
        row = [level, pct(over[level])]
        for name in runs:
            think, short = clipped[name]
            cut = "not logged" if not think and not short else f"{pct(think.get(level))} / {pct(short.get(level))}"
            row += [cut, pct(finals[name]["auto"]["by_difficulty"][level]["think_ratio"]),
                    oracles[name]["by_difficulty"][level]["mode"]]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| run | auto accuracy (mix) | reward-oracle accuracy (mix) | auto - oracle (points) | "
                  "auto think ratio (mix) | oracle think ratio (mix) |", "|---|---|---|---|---|---|"]
    for name, final in finals.items():
        auto, oracle = final["auto"]["on_mix"], oracles[name]["on_mix"]
        lines.append(f"| {name} | {100 * auto['accuracy']:.1f}% | {100 * oracle['accuracy']:.1f}% | "
                     f"{100 * (auto['accuracy'] - oracle['accuracy']):+.1f} | {100 * auto['think_ratio']:.1f}% | "
                     f"{100 * oracle['think_ratio']:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR", help="e.g. off=/work/runs/t4_off (the first one's "
                        "warm-up evaluation gives the answer lengths)")
    parser.add_argument("--cap", type=int, required=True, help="the RL completion cap the runs trained at")
    parser.add_argument("--config", default="mini")
    args = parser.parse_args(argv)
    runs = dict(spec.split("=", 1) for spec in args.runs)
    print(table({name: Path(path) for name, path in runs.items()}, args.cap, args.config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
