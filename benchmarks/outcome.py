"""Does the model learn when to think? Shared by the learning-outcome benchmarks (not a test).

Reads a quickstart report (``thinkless_lite.stages.quickstart``: the final evaluation and the one after the
warm-up, in the schema of ``thinkless_lite.report``) and states the targets with PASS / MISS, as measured.
Routing is judged against forced thinking and against the **reward-optimal router**: per difficulty level,
the mode with the higher expected reward under the run's reward table, given the measured forced-mode
accuracies. Re-read a finished run:

    python benchmarks/outcome.py runs/real_model/smollm2/report.json --config smollm2_135m_cpu
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def final_modes(report: dict, benchmark: str = "miniworld") -> dict:
    return report["final"]["benchmarks"][benchmark]


def expected_reward(mode: str, accuracy: float, table) -> float:
    """A mode's expected reward under ``table`` (a ``RewardTable``) when its answers are right with ``accuracy``."""
    right, wrong = ((table.think_correct, table.think_wrong) if mode == "think"
                    else (table.short_correct, table.short_wrong))
    return accuracy * right + (1 - accuracy) * wrong


def better_mode(expected: dict[str, float]) -> str:
    """The mode with the higher expected reward; a tie goes to the cheaper ``short``."""
    return "think" if expected["think"] > expected["short"] else "short"


def gap_standard_error(think: dict, short: dict, table) -> float | None:
    """The standard error of ``expected think - expected short`` reward at one level, from each mode's accuracy
    over its ``n`` questions (binomial, the two modes' answers taken as independent): how far the oracle's
    gap could move on another draw of as many questions. None without counts. At 20 questions a level a gap
    of +0.10 is within one standard error of a tie, so no router, trained or not, can be judged on it."""
    if not think.get("n") or not short.get("n"):
        return None

    def variance(stats, right, wrong):
        return (right - wrong) ** 2 * stats["accuracy"] * (1 - stats["accuracy"]) / stats["n"]

    return math.sqrt(variance(think, table.think_correct, table.think_wrong)
                     + variance(short, table.short_correct, table.short_wrong))


def reward_oracle(modes: dict, table, mix: dict) -> dict:
    """The reward-optimal router of a final evaluation: per level, ``think`` or ``short``, whichever has the
    higher expected reward under ``table`` (a ``RewardTable``) given forced think's and forced short's measured
    accuracies there (a tie goes to the cheaper ``short``); its accuracy and tokens per level and on ``mix``,
    and per level the reward gap think - short with its standard error (:func:`gap_standard_error`)."""
    think, short = modes["think"]["by_difficulty"], modes["short"]["by_difficulty"]
    by_level = {}
    for level in think:
        expected = {"think": expected_reward("think", think[level]["accuracy"], table),
                    "short": expected_reward("short", short[level]["accuracy"], table)}
        chosen = better_mode(expected)
        stats = (think if chosen == "think" else short)[level]
        by_level[level] = {"mode": chosen, "accuracy": stats["accuracy"], "mean_tokens": stats["mean_tokens"],
                           "expected_reward": expected[chosen], "gap": expected["think"] - expected["short"],
                           "gap_se": gap_standard_error(think[level], short[level], table)}
    weights = {str(k): float(w) for k, w in mix.items() if str(k) in by_level}
    total = sum(weights.values()) or 1.0
    on_mix = {key: sum(w * by_level[k][key] for k, w in weights.items()) / total
              for key in ("accuracy", "mean_tokens", "expected_reward")}
    on_mix["think_ratio"] = sum(w for k, w in weights.items() if by_level[k]["mode"] == "think") / total
    return {"by_difficulty": by_level, "on_mix": on_mix}


def last_steps(metrics_jsonl: Path, share: float) -> list[dict]:
    """The RL log's step rows (those with ``p_think``; not the run's closing summary), the last ``share`` of them."""
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "p_think" in r]
    return rows[int(len(rows) * (1 - share)):]


def training_oracle(metrics_jsonl: Path, table, last_share: float = 0.5) -> dict:
    """What DeGRPO's own answers asked for: per level, think's and short's accuracy during the last
    ``last_share`` of the RL steps (the mean of the steps' batch accuracies in ``rl/metrics.jsonl``), and the mode
    with the higher expected reward at those. The accuracies are the forced answers' (``forced_accuracy_<mode>/k``,
    decoded greedily: what valued each mode, ``rl.greedy_forced_answers``) where the run logged them, else every
    answer's (``accuracy_<mode>/k``, sampled at the RL temperature); ``source`` says which. All on training
    questions: the rule can only follow the rewards it saw, so where this differs from the final evaluation's
    oracle, the held-out answers scored differently from the training ones."""
    rows = last_steps(metrics_jsonl, last_share)
    forced = any(key.startswith("forced_accuracy_") for r in rows for key in r)
    prefix, source = ("forced_accuracy", "forced answers, greedy") if forced else ("accuracy", "all answers, sampled")
    levels = sorted({key.split("/k")[1] for r in rows for key in r if key.startswith(f"{prefix}_think/k")}, key=float)
    by_level = {}
    for level in levels:
        seen = {mode: [v for r in rows if (v := r.get(f"{prefix}_{mode}/k{level}")) is not None and not math.isnan(v)]
                for mode in ("think", "short")}
        if not all(seen.values()):
            continue
        accuracy = {mode: sum(v) / len(v) for mode, v in seen.items()}
        expected = {mode: expected_reward(mode, accuracy[mode], table) for mode in accuracy}
        by_level[level] = {"mode": better_mode(expected), "accuracy": accuracy, "expected_reward": expected,
                           "steps": len(seen["think"]), "source": source}
    return by_level


SHIFT_LIMIT = 20.0  # log-odds: past this every level is sure of one mode, so the threshold "never stops"


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def threshold_pull(shift: float, shares: dict, gaps: dict, log_odds: dict) -> float:
    """How the mix's expected reward changes with a log-odds shift shared by every level (per unit of shift):
    ``sum_k share_k q_k (1 - q_k) gap_k`` with ``q_k = sigmoid(log_odds_k + shift)``, the exact on-policy
    gradient that the threshold (``losses.threshold_step``) follows, over the difficulty mix instead of a batch."""
    total = 0.0
    for level, share in shares.items():
        q = _sigmoid(log_odds[level] + shift)
        total += share * q * (1 - q) * gaps[level]
    return total


def threshold_destination(shares: dict, gaps: dict, log_odds: dict, limit: float = SHIFT_LIMIT,
                          step: float = 0.05) -> float:
    """Where the threshold goes from here if the ranking stays as it is: following the pull's sign from a shift
    of 0 to its first zero (bisected), or to ``±limit`` where the pull keeps one sign (every level sure of one
    mode). The zero it reaches maximises the mix's expected reward given the ranking: the best a threshold can do."""
    now = threshold_pull(0.0, shares, gaps, log_odds)
    if now == 0:
        return 0.0
    direction = 1.0 if now > 0 else -1.0
    inside = 0.0
    while abs(inside) < limit:
        outside = inside + direction * step
        if threshold_pull(outside, shares, gaps, log_odds) * direction <= 0:
            for _ in range(40):
                middle = (inside + outside) / 2
                if threshold_pull(middle, shares, gaps, log_odds) * direction > 0:
                    inside = middle
                else:
                    outside = middle
            return (inside + outside) / 2
        inside = outside
    return direction * limit


def threshold_check(metrics_jsonl: Path, table, mix: dict, last_share: float = 0.25, margin: float = 0.05,
                    max_stretch: float = 10.0) -> dict | None:
    """Is a routing miss the threshold's or the ranking's? From a DeGRPO run's log: each level's reward gap as
    its answers priced the modes (:func:`training_oracle`) and its P(``<think>``) over the last ``last_share`` of the
    steps (``p_think/k``: the ranking and the threshold as they ended). Returns the pull now, the shift the
    threshold heads to given that ranking (:func:`threshold_destination`), P(think) per level there, whether that
    routes every level whose gap is >= ``margin`` as the answers asked, and, if not, how many times its spread
    around the mix's mean the ranking would need (``stretch_needed``; None beyond ``max_stretch``). Where the
    destination routes, the threshold had not got there yet; where it does not, no threshold could: the levels
    are too close together for their gaps, and the miss is the ranking's."""
    asked = training_oracle(metrics_jsonl, table)
    rows = last_steps(metrics_jsonl, last_share)
    p_now = {}
    for level in asked:
        seen = [v for r in rows if (v := r.get(f"p_think/k{level}")) is not None and not math.isnan(v)]
        if seen:
            p_now[level] = min(max(sum(seen) / len(seen), 1e-4), 1 - 1e-4)
    shares = {str(k): float(w) for k, w in mix.items() if str(k) in p_now}
    if not shares:
        return None
    gaps = {k: asked[k]["expected_reward"]["think"] - asked[k]["expected_reward"]["short"] for k in shares}
    log_odds = {k: math.log(p_now[k] / (1 - p_now[k])) for k in shares}

    def routed(spread: float) -> tuple[float, dict, bool]:
        centre = sum(shares[k] * log_odds[k] for k in shares) / sum(shares.values())
        stretched = {k: centre + spread * (z - centre) for k, z in log_odds.items()}
        shift = threshold_destination(shares, gaps, stretched)
        there = {k: _sigmoid(z + shift) for k, z in stretched.items()}
        ok = all((there[k] > 0.5) == (gaps[k] > 0) for k in shares if abs(gaps[k]) >= margin)
        return shift, there, ok

    shift, there, agrees = routed(1.0)
    wider = (round(1 + 0.1 * i, 1) for i in range(1, int((max_stretch - 1) * 10) + 1))
    stretch = 1.0 if agrees else next((f for f in wider if routed(f)[2]), None)
    return {"p_think_now": p_now, "gaps": gaps, "pull_now": threshold_pull(0.0, shares, gaps, log_odds),
            "shift": shift, "p_think_there": there, "agrees": agrees, "stretch_needed": stretch,
            "max_stretch": max_stretch}


def targets(report: dict, wall_minutes: float, benchmark: str = "miniworld", *, table=None, mix: dict | None = None,
            think_bounds: tuple[float, float] = (0.10, 0.90)) -> list[tuple[str, float, str, bool]]:
    """Wall time; auto accuracy vs forced think (on the difficulty mix and on every level equally); think
    ratio at the easiest and hardest level (at most / at least ``think_bounds``); auto tokens as a share of
    forced think's (mix); with ``table`` and ``mix``, auto accuracy vs the reward-optimal router's (mix)."""
    low, high = think_bounds
    modes = final_modes(report, benchmark)
    auto, think = modes["auto"], modes["think"]
    levels = sorted(auto["by_difficulty"], key=float)
    easiest, hardest = auto["by_difficulty"][levels[0]], auto["by_difficulty"][levels[-1]]
    token_share = auto["on_mix"]["mean_tokens"] / think["on_mix"]["mean_tokens"]
    gap_mix = 100 * (auto["on_mix"]["accuracy"] - think["on_mix"]["accuracy"])
    gap_levels = 100 * (auto["accuracy"] - think["accuracy"])
    minutes = report["wall_time_seconds"] / 60
    rows = [
        ("wall time (min)", minutes, f"<= {wall_minutes:g}", minutes <= wall_minutes),
        ("auto acc - think acc, default mix (points)", gap_mix, ">= -2", gap_mix >= -2),
        ("auto acc - think acc, every level equally (points)", gap_levels, ">= -2", gap_levels >= -2),
        (f"think ratio at k={levels[0]}", easiest["think_ratio"], f"<= {low:.2f}", easiest["think_ratio"] <= low),
        (f"think ratio at k={levels[-1]}", hardest["think_ratio"], f">= {high:.2f}", hardest["think_ratio"] >= high),
        ("auto tokens / think tokens, default mix", token_share, "<= 0.50", token_share <= 0.50),
    ]
    if table is not None and mix:
        oracle = reward_oracle(modes, table, mix)["on_mix"]
        gap_oracle = 100 * (auto["on_mix"]["accuracy"] - oracle["accuracy"])
        rows.append(("auto acc - reward-oracle acc, default mix (points)", gap_oracle, ">= -2", gap_oracle >= -2))
        wrong = misrouted_levels(modes, table, think_bounds=(0.20, 0.80))
        rows.append(("levels routed against the reward oracle (gap >= 0.05)", float(len(wrong)),
                     "0" + (f" ({', '.join(wrong)})" if wrong else ""), not wrong))
    return rows


def misrouted_levels(modes: dict, table, think_bounds: tuple[float, float] = (0.20, 0.80),
                     margin: float = 0.05) -> list[str]:
    """Levels where one mode's expected reward beats the other's by >= ``margin`` at the measured forced-mode
    accuracies, but auto's think ratio is not >= the upper bound (thinking pays) or <= the lower one (a direct
    answer pays)."""
    low, high = think_bounds
    oracle = reward_oracle(modes, table, {})["by_difficulty"]
    wrong = []
    for level, best in oracle.items():
        ratio = modes["auto"]["by_difficulty"][level]["think_ratio"]
        if (best["gap"] >= margin and ratio < high) or (best["gap"] <= -margin and ratio > low):
            wrong.append(f"k={level}")
    return sorted(wrong, key=lambda k: float(k[2:]))


def describe(name: str, report: dict, wall_minutes: float, benchmark: str = "miniworld", *, table=None,
             mix: dict | None = None, think_bounds: tuple[float, float] = (0.10, 0.90),
             metrics_jsonl: Path | None = None) -> str:
    """Markdown: the targets, the three routings (and the reward oracle) on the mix and on every level, and
    auto's think ratio by level; with ``metrics_jsonl`` (the run's ``rl/metrics.jsonl``) also
    :func:`training_oracle`."""
    rows = [f"### {name}", "", "| measure | value | target | |", "|---|---|---|---|"]
    for label, value, goal, ok in targets(report, wall_minutes, benchmark, table=table, mix=mix,
                                          think_bounds=think_bounds):
        rows.append(f"| {label} | {value:.3f} | {goal} | {'PASS' if ok else 'MISS'} |")
    modes = final_modes(report, benchmark)
    rows += ["", "| mode | accuracy (mix) | think ratio (mix) | mean tokens (mix) | accuracy (levels) | mean tokens (levels) |",
             "|---|---|---|---|---|---|"]
    for mode in ("auto", "think", "short"):
        s, m = modes[mode], modes[mode]["on_mix"]
        rows.append(f"| {mode} | {m['accuracy']:.3f} | {m['think_ratio']:.3f} | {m['mean_tokens']:.1f} | "
                    f"{s['accuracy']:.3f} | {s['mean_tokens']:.1f} |")
    if table is not None and mix:
        oracle = reward_oracle(modes, table, mix)
        m = oracle["on_mix"]
        rows.append(f"| reward oracle | {m['accuracy']:.3f} | {m['think_ratio']:.3f} | {m['mean_tokens']:.1f} | — | — |")
        rows += ["", "reward oracle by level (mode, accuracy, expected reward, reward gap think - short ± its "
                 "standard error): " + "; ".join(
                     f"k={k}: {v['mode']}, {v['accuracy']:.2f}, {v['expected_reward']:+.2f}, {v['gap']:+.2f}"
                     + (f" ± {v['gap_se']:.2f}" if v["gap_se"] is not None else "")
                     for k, v in sorted(oracle["by_difficulty"].items(), key=lambda kv: float(kv[0])))]
    if table is not None and metrics_jsonl is not None and Path(metrics_jsonl).exists():
        seen = training_oracle(metrics_jsonl, table)
        source = next(iter(seen.values()))["source"] if seen else "none logged"
        rows += ["", f"what DeGRPO's own answers asked for (last half of the steps, {source}; mode, think / short "
                 "accuracy, expected reward think / short): " + "; ".join(
                     f"k={k}: {v['mode']}, {v['accuracy']['think']:.2f} / {v['accuracy']['short']:.2f}, "
                     f"{v['expected_reward']['think']:+.2f} / {v['expected_reward']['short']:+.2f}"
                     for k, v in seen.items())]
        check = threshold_check(metrics_jsonl, table, mix) if mix else None
        if check:
            order = sorted(check["p_think_now"], key=float)
            verdict = ("routes as its answers asked (a level that still misses: the threshold had not got there yet)"
                       if check["agrees"] else
                       "does not route as its answers asked, so no threshold could: the miss is the ranking's, "
                       + (f"which would need {check['stretch_needed']:.1f}x its spread between levels"
                          if check["stretch_needed"] else
                          f"whose levels are too close for any stretch up to {check['max_stretch']:g}x"))
            there = ", ".join(f"k={k} {check['p_think_there'][k]:.2f}" for k in order)
            stop = (f"it never stops: it takes every level to {'think' if check['shift'] > 0 else 'short'}"
                    if abs(check["shift"]) >= SHIFT_LIMIT else
                    f"it stops at a shift of {check['shift']:+.2f} log-odds (P(think) {there})")
            rows += ["", "the threshold given the ranking DeGRPO ended with (P(think) over the last quarter of the "
                     "steps: " + ", ".join(f"k={k} {check['p_think_now'][k]:.2f}" for k in order)
                     + f"): its pull is {check['pull_now']:+.4f} a unit of shift (towards "
                     f"{'think' if check['pull_now'] > 0 else 'short'}); {stop}, which {verdict}"]
    by_level = sorted(modes["auto"]["by_difficulty"].items(), key=lambda kv: float(kv[0]))
    rows += ["", "auto by level (think ratio / accuracy; forced think accuracy; forced short accuracy): " + "; ".join(
        f"k={k}: {v['think_ratio']:.2f} / {v['accuracy']:.2f}; {modes['think']['by_difficulty'][k]['accuracy']:.2f}; "
        f"{modes['short']['by_difficulty'][k]['accuracy']:.2f}" for k, v in by_level)]
    timings = report.get("timings_seconds", {})
    if timings:
        rows.append("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Targets and the reward oracle of a finished quickstart run.")
    parser.add_argument("report", help="a quickstart report.json")
    parser.add_argument("--config", default="mini", help="the run's recipe (reward table and difficulty mix)")
    parser.add_argument("--wall-minutes", type=float, default=60)
    parser.add_argument("--think-bounds", default="0.10,0.90", help="at most at the easiest level, at least at the hardest")
    args = parser.parse_args(argv)
    from thinkless_lite.config import load_config

    cfg = load_config(args.config)
    bounds = tuple(float(x) for x in args.think_bounds.split(","))
    report = json.loads(Path(args.report).read_text())
    print(describe(args.report, report, args.wall_minutes, table=cfg.rl.reward, mix=cfg.miniworld.difficulty_weights,
                   think_bounds=bounds, metrics_jsonl=Path(args.report).parent / "rl" / "metrics.jsonl"))


if __name__ == "__main__":
    main()
