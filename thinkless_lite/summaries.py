"""Summaries of graded records: what a report's numbers are (pure).

The schema's numbers are made here and only here: the evaluation stage and the tau sweep summarise records with
:func:`summarize`, and the report orders difficulty levels with :func:`level_order`, so a level reads the same in
the JSON, the tables and the figures.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from thinkless_lite.tokens import THINK


def level_name(level) -> str:
    """A difficulty as a JSON key: ``3`` and ``3.0`` both become ``"3"``."""
    if isinstance(level, float) and level.is_integer():
        level = int(level)
    return str(level)


def level_order(name: str):
    """Sort key of a level's name: numeric levels by value, then any others by name."""
    try:
        return (0, float(name), "")
    except ValueError:
        return (1, 0.0, name)


def summarize(records: Iterable[dict], mix: dict | None = None) -> dict:
    """``n, accuracy, think_ratio, mean_tokens, format_error_rate`` and ``by_difficulty``.

    ``by_difficulty`` maps each level (a string, ordered numerically) to its own ``n, accuracy,
    think_ratio, mean_tokens``; records without a difficulty are left out of it. With ``mix`` (level ->
    weight, the mini-world's difficulty mix) ``on_mix`` re-weights the levels by it: the held-out set has
    the same number of questions at every level, so hard levels are measured as precisely as easy ones,
    while the mix is what a user drawing from the task family sees.
    """
    records = list(records)
    summary = _basic_stats(records)
    summary["format_error_rate"] = _rate(records, lambda r: bool(r["format_error"]))
    levels: dict[str, list[dict]] = {}
    for record in records:
        if record.get("difficulty") is not None:
            levels.setdefault(level_name(record["difficulty"]), []).append(record)
    summary["by_difficulty"] = {name: _basic_stats(levels[name]) for name in sorted(levels, key=level_order)}
    if mix:
        weights = {level_name(k): float(w) for k, w in mix.items() if level_name(k) in levels}
        total = sum(weights.values())
        if total:
            summary["on_mix"] = {key: sum(w * summary["by_difficulty"][k][key] for k, w in weights.items()) / total
                                 for key in ("accuracy", "think_ratio", "mean_tokens")}
    return summary


def _basic_stats(records: Sequence[dict]) -> dict:
    """n, accuracy, think ratio and mean generated tokens; all 0.0 for no records."""
    return {
        "n": len(records),
        "accuracy": _rate(records, lambda r: bool(r["correct"])),
        "think_ratio": _rate(records, lambda r: r["mode"] == THINK),
        "mean_tokens": sum(r["num_tokens"] for r in records) / len(records) if records else 0.0,
    }


def _rate(records: Sequence[dict], predicate) -> float:
    return sum(1 for r in records if predicate(r)) / len(records) if records else 0.0


def with_tokens_saved(per_mode: dict[str, dict]) -> dict[str, dict]:
    """Add ``tokens_saved_vs_think`` = 1 - mean tokens / forced-think mean tokens (when think ran)."""
    think = per_mode.get("think")
    if not think or not think.get("mean_tokens"):
        return dict(per_mode)
    return {mode: {**s, "tokens_saved_vs_think": 1.0 - s["mean_tokens"] / think["mean_tokens"]}
            for mode, s in per_mode.items()}
