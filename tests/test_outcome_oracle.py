"""The reward-optimal router that the outcome benchmarks judge routing against (benchmarks/outcome.py)."""

import sys

import pytest

from thinkless_lite.rewards import RewardTable

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from outcome import (describe, reward_oracle, targets, threshold_check, threshold_destination,  # noqa: E402
                     threshold_pull, training_oracle)


def level(accuracy, tokens, think_ratio):
    return {"n": 20, "accuracy": accuracy, "think_ratio": think_ratio, "mean_tokens": tokens}


def report(auto_levels, think_levels, short_levels):
    def mode(levels, mix_accuracy):
        return {"accuracy": sum(v["accuracy"] for v in levels.values()) / len(levels),
                "mean_tokens": sum(v["mean_tokens"] for v in levels.values()) / len(levels),
                "by_difficulty": levels, "on_mix": {"accuracy": mix_accuracy, "think_ratio": 0.0, "mean_tokens": 10.0}}

    return {"wall_time_seconds": 60.0, "final": {"benchmarks": {"miniworld": {
        "auto": mode(auto_levels, 0.837), "think": mode(think_levels, 0.975), "short": mode(short_levels, 0.837)}}}}


# SmolLM2 after the collapsed DeGRPO run (issue 20): forced short 100/80/55%, forced think 100/95/95%.
THINK = {"1": level(1.0, 60, 1), "2": level(0.95, 75, 1), "3": level(0.95, 90, 1)}
SHORT = {"1": level(1.0, 8, 0), "2": level(0.80, 11, 0), "3": level(0.55, 13, 0)}
MIX = {1: 0.5, 2: 0.25, 3: 0.25}


def test_the_oracle_answers_directly_while_that_pays_more_and_thinks_where_it_does_not():
    oracle = reward_oracle({"think": {"by_difficulty": THINK}, "short": {"by_difficulty": SHORT}}, RewardTable(), MIX)
    modes = {k: v["mode"] for k, v in oracle["by_difficulty"].items()}
    assert modes == {"1": "short", "2": "short", "3": "think"}  # 0.8 right pays 0.6 > 0.425; 0.55 pays 0.1 < 0.425
    assert oracle["on_mix"]["accuracy"] == pytest.approx(0.5 * 1.0 + 0.25 * 0.80 + 0.25 * 0.95)  # 93.75%
    assert oracle["on_mix"]["think_ratio"] == pytest.approx(0.25)
    assert oracle["on_mix"]["mean_tokens"] == pytest.approx(0.5 * 8 + 0.25 * 11 + 0.25 * 90)


def test_the_oracle_says_how_far_its_gap_could_move_on_another_draw_of_questions():
    """k=3: think 0.95 right (1.5 between right and wrong), short 0.55 (2.0 between), 20 questions each."""
    oracle = reward_oracle({"think": {"by_difficulty": THINK}, "short": {"by_difficulty": SHORT}}, RewardTable(), MIX)
    k3 = oracle["by_difficulty"]["3"]
    assert k3["gap"] == pytest.approx(0.425 - 0.10)
    assert k3["gap_se"] == pytest.approx((1.5 ** 2 * 0.95 * 0.05 / 20 + 2.0 ** 2 * 0.55 * 0.45 / 20) ** 0.5)
    assert oracle["by_difficulty"]["1"]["gap_se"] == 0.0  # both modes always right: no doubt at all
    text = describe("collapsed", report(SHORT, THINK, SHORT), 60, table=RewardTable(), mix=MIX)
    assert f"k=3: think, 0.95, {k3['expected_reward']:+.2f}, {k3['gap']:+.2f} ± {k3['gap_se']:.2f}" in text
    uncounted = {k: {key: v for key, v in stats.items() if key != "n"} for k, stats in THINK.items()}
    assert reward_oracle({"think": {"by_difficulty": uncounted}, "short": {"by_difficulty": SHORT}}, RewardTable(),
                         MIX)["by_difficulty"]["3"]["gap_se"] is None


def test_another_reward_table_moves_the_oracle():
    generous = RewardTable(think_correct=0.9)  # thinking nearly as welcome as a direct answer
    oracle = reward_oracle({"think": {"by_difficulty": THINK}, "short": {"by_difficulty": SHORT}}, generous, MIX)
    assert oracle["by_difficulty"]["2"]["mode"] == "think"  # 0.95*0.9-0.05 = 0.805 > 0.6


def test_the_collapsed_run_misses_the_oracle_target_by_ten_points():
    collapsed = report(SHORT, THINK, SHORT)
    rows = {label: (value, ok) for label, value, _, ok in targets(collapsed, 60, table=RewardTable(), mix=MIX,
                                                                   think_bounds=(0.2, 0.8))}
    value, ok = rows["auto acc - reward-oracle acc, default mix (points)"]
    assert value == pytest.approx(100 * (0.837 - 0.9375)) and not ok
    assert not rows["think ratio at k=3"][1] and rows["think ratio at k=1"][1]
    assert "reward oracle" in describe("collapsed", collapsed, 60, table=RewardTable(), mix=MIX)


def test_the_training_oracle_reads_the_last_half_of_the_rl_steps_and_says_what_their_rewards_asked_for(tmp_path):
    """Four logged steps (the first half ignored): k=2's direct answers right 0.75, its thinking ones 0.875 in the
    second half, so a direct answer paid more there (+0.5 against +0.3125) although early steps said otherwise;
    a level missing one mode in those steps is left out; the describe() line names it."""
    import json

    steps = [{"step": 1, "p_think": 0.5, "accuracy_think/k2": 0.0, "accuracy_short/k2": 0.0},
             {"step": 2, "p_think": 0.5, "accuracy_think/k2": 0.0, "accuracy_short/k2": 0.0},
             {"step": 3, "p_think": 0.5, "accuracy_think/k2": 1.0, "accuracy_short/k2": 0.5, "accuracy_think/k3": 1.0},
             {"step": 4, "p_think": 0.5, "accuracy_think/k2": 0.75, "accuracy_short/k2": 1.0},
             {"train_runtime": 9.0}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(s) for s in steps) + "\n")
    seen = training_oracle(metrics, RewardTable())
    assert set(seen) == {"2"}
    assert seen["2"]["accuracy"] == pytest.approx({"think": 0.875, "short": 0.75})
    assert seen["2"]["expected_reward"] == pytest.approx({"think": 0.875 * 0.5 - 0.125, "short": 0.75 - 0.25})
    assert seen["2"]["mode"] == "short" and seen["2"]["steps"] == 2
    text = describe("run", report(THINK, THINK, SHORT), 1.0, table=RewardTable(), mix=MIX, metrics_jsonl=metrics)
    assert "what DeGRPO's own answers asked for" in text and "k=2: short, 0.88 / 0.75" in text


def test_the_training_oracle_reads_the_forced_greedy_answers_where_the_run_logged_them(tmp_path):
    """With ``rl.greedy_forced_answers`` the forced answers valued each mode: their accuracies, not every
    answer's, say what the run asked for (here thinking, where every sampled answer said short); a step with no
    forced answer of a level (NaN, or None as TRL logs it) is skipped."""
    import json

    steps = [{"step": 1, "p_think": 0.5, "forced_accuracy_think/k3": 0.0, "forced_accuracy_short/k3": 1.0},
             {"step": 2, "p_think": 0.5, "forced_accuracy_think/k3": 0.0, "forced_accuracy_short/k3": 1.0},
             {"step": 3, "p_think": 0.5, "accuracy_think/k3": 0.5, "accuracy_short/k3": 0.9,
              "forced_accuracy_think/k3": 1.0, "forced_accuracy_short/k3": 0.5},
             {"step": 4, "p_think": 0.5, "accuracy_think/k3": 0.5, "accuracy_short/k3": 0.9,
              "forced_accuracy_think/k3": float("nan"), "forced_accuracy_short/k3": 0.0},
             {"step": 5, "p_think": 0.5, "forced_accuracy_think/k3": None, "forced_accuracy_short/k3": None}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(s) for s in steps) + "\n")
    seen = training_oracle(metrics, RewardTable())
    assert seen["3"]["accuracy"] == pytest.approx({"think": 1.0, "short": 0.25})
    assert seen["3"]["mode"] == "think" and seen["3"]["source"] == "forced answers, greedy"
    text = describe("run", report(THINK, THINK, SHORT), 1.0, table=RewardTable(), mix=MIX, metrics_jsonl=metrics)
    assert "forced answers, greedy" in text and "k=3: think, 1.00 / 0.25" in text


SMOLLM2_MIX = {"1": 0.5, "2": 0.25, "3": 0.25}


def test_the_threshold_goes_where_the_mix_pays_most_given_the_ranking():
    """Levels ranked well apart (log-odds -5, -3, -1; gaps -0.5, -0.3, +0.4): the pull is towards think, and the
    threshold stops where it vanishes, with the 3-digit level thinking and the others not; the shift reached is a
    maximum of the mix's expected reward (the pull changes sign there, from + to -)."""
    gaps, log_odds = {"1": -0.5, "2": -0.3, "3": 0.4}, {"1": -5.0, "2": -3.0, "3": -1.0}
    assert threshold_pull(0.0, SMOLLM2_MIX, gaps, log_odds) > 0
    shift = threshold_destination(SMOLLM2_MIX, gaps, log_odds)
    assert 0 < shift < 20
    assert threshold_pull(shift, SMOLLM2_MIX, gaps, log_odds) == pytest.approx(0, abs=1e-9)
    assert threshold_pull(shift - 0.1, SMOLLM2_MIX, gaps, log_odds) > 0 > threshold_pull(shift + 0.1, SMOLLM2_MIX, gaps,
                                                                                            log_odds)
    assert log_odds["3"] + shift > 0 > log_odds["2"] + shift


def test_a_ranking_too_flat_for_its_gaps_leaves_no_threshold_that_routes(tmp_path):
    """SmolLM2 seed 1 with its own warm-up (the README's remaining MISS): its forced answers priced k=1..3 at
    -0.5, -0.095, +0.065 (think - short) and it ended at P(think) 0.05 / 0.16 / 0.32. At that ranking every shift
    loses more on the 1-digit half of the mix than it gains at k=3, so the threshold heads to short everywhere:
    no threshold routes it; the levels' log-odds would need over twice their spread. A run whose ranking is wide
    enough is told the threshold had not got there yet."""
    import json

    def run(p_think, name):
        steps = [{"step": i, "p_think": 0.3, "p_think/k1": p_think[0], "p_think/k2": p_think[1],
                  "p_think/k3": p_think[2], "forced_accuracy_think/k1": 1.0, "forced_accuracy_short/k1": 1.0,
                  "forced_accuracy_think/k2": 0.91, "forced_accuracy_short/k2": 0.73,
                  "forced_accuracy_think/k3": 0.71, "forced_accuracy_short/k3": 0.5} for i in range(8)]
        metrics = tmp_path / f"{name}.jsonl"
        metrics.write_text("\n".join(json.dumps(s) for s in steps) + "\n")
        return metrics, threshold_check(metrics, RewardTable(), {1: 0.5, 2: 0.25, 3: 0.25})

    metrics, flat = run((0.05, 0.16, 0.32), "flat")
    assert flat["gaps"] == pytest.approx({"1": -0.5, "2": -0.095, "3": 0.065})
    assert flat["pull_now"] < 0 and flat["shift"] == -20.0 and not flat["agrees"]
    assert all(p < 0.01 for p in flat["p_think_there"].values())
    assert 1.5 < flat["stretch_needed"] < 4
    text = describe("run", report(THINK, THINK, SHORT), 1.0, table=RewardTable(), mix=MIX, metrics_jsonl=metrics)
    assert "the miss is the ranking's" in text and f"{flat['stretch_needed']:.1f}x its spread" in text
    assert "it never stops: it takes every level to short" in text

    metrics, wide = run((0.001, 0.02, 0.3), "wide")
    assert wide["agrees"] and wide["stretch_needed"] == 1.0
    assert wide["p_think_there"]["3"] > 0.5 > wide["p_think_there"]["2"]
    text = describe("run", report(THINK, THINK, SHORT), 1.0, table=RewardTable(), mix=MIX, metrics_jsonl=metrics)
    assert "the threshold had not got there yet" in text
