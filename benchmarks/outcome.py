"""Does the model learn when to think? Shared by the learning-outcome benchmarks (not a test).

Reads a quickstart report (``thinkless_lite.stages.quickstart``: the final evaluation and the one after the
warm-up, in the schema of ``thinkless_lite.report``) and states the targets with PASS / MISS, as measured.
"""

from __future__ import annotations


def final_modes(report: dict, benchmark: str = "miniworld") -> dict:
    return report["final"]["benchmarks"][benchmark]


def targets(report: dict, wall_minutes: float, benchmark: str = "miniworld") -> list[tuple[str, float, str, bool]]:
    """Wall time; auto accuracy vs forced think (on the difficulty mix and on every level equally); think
    ratio at the easiest and hardest level; auto tokens as a share of forced think's (mix)."""
    modes = final_modes(report, benchmark)
    auto, think = modes["auto"], modes["think"]
    levels = sorted(auto["by_difficulty"], key=float)
    easiest, hardest = auto["by_difficulty"][levels[0]], auto["by_difficulty"][levels[-1]]
    token_share = auto["on_mix"]["mean_tokens"] / think["on_mix"]["mean_tokens"]
    gap_mix = 100 * (auto["on_mix"]["accuracy"] - think["on_mix"]["accuracy"])
    gap_levels = 100 * (auto["accuracy"] - think["accuracy"])
    minutes = report["wall_time_seconds"] / 60
    return [
        ("wall time (min)", minutes, f"<= {wall_minutes:g}", minutes <= wall_minutes),
        ("auto acc - think acc, default mix (points)", gap_mix, ">= -2", gap_mix >= -2),
        ("auto acc - think acc, every level equally (points)", gap_levels, ">= -2", gap_levels >= -2),
        (f"think ratio at k={levels[0]}", easiest["think_ratio"], "<= 0.10", easiest["think_ratio"] <= 0.10),
        (f"think ratio at k={levels[-1]}", hardest["think_ratio"], ">= 0.90", hardest["think_ratio"] >= 0.90),
        ("auto tokens / think tokens, default mix", token_share, "<= 0.50", token_share <= 0.50),
    ]


def describe(name: str, report: dict, wall_minutes: float, benchmark: str = "miniworld") -> str:
    """Markdown: the targets, the three routings on the mix and on every level, and auto's think ratio by level."""
    rows = [f"### {name}", "", "| measure | value | target | |", "|---|---|---|---|"]
    for label, value, goal, ok in targets(report, wall_minutes, benchmark):
        rows.append(f"| {label} | {value:.3f} | {goal} | {'PASS' if ok else 'MISS'} |")
    modes = final_modes(report, benchmark)
    rows += ["", "| mode | accuracy (mix) | think ratio (mix) | mean tokens (mix) | accuracy (levels) | mean tokens (levels) |",
             "|---|---|---|---|---|---|"]
    for mode in ("auto", "think", "short"):
        s, m = modes[mode], modes[mode]["on_mix"]
        rows.append(f"| {mode} | {m['accuracy']:.3f} | {m['think_ratio']:.3f} | {m['mean_tokens']:.1f} | "
                    f"{s['accuracy']:.3f} | {s['mean_tokens']:.1f} |")
    by_level = sorted(modes["auto"]["by_difficulty"].items(), key=lambda kv: float(kv[0]))
    rows += ["", "auto by level (think ratio / accuracy; forced think accuracy; forced short accuracy): " + "; ".join(
        f"k={k}: {v['think_ratio']:.2f} / {v['accuracy']:.2f}; {modes['think']['by_difficulty'][k]['accuracy']:.2f}; "
        f"{modes['short']['by_difficulty'][k]['accuracy']:.2f}" for k, v in by_level)]
    timings = report.get("timings_seconds", {})
    if timings:
        rows.append("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return "\n".join(rows)
