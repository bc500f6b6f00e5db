"""Graded records: items answered by the one engine (:func:`thinkless_lite.generation.generate`), each answer
graded by the reward's own checker (:func:`thinkless_lite.rewards.score_completion`: the answer is read only
after ``</think>`` / ``<short>``) and kept as a JSON-friendly record, appended to a JSONL file as its batch
finishes so that a killed evaluation resumes where it stopped; and the think-threshold sweep over them.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

from thinkless_lite.data.items import MathItem
from thinkless_lite.generation import SamplingSettings, generate
from thinkless_lite.jsonl import append_jsonl, read_jsonl
from thinkless_lite.rewards import score_completion
from thinkless_lite.summaries import summarize
from thinkless_lite.tokens import ControlTokens, Routing

RECORD_FIELDS = ("benchmark", "id", "question", "gold", "difficulty", "requested", "mode", "p_think",
                 "completion", "answer", "num_tokens", "correct", "format_error", "sample", "seed")

log = logging.getLogger("thinkless_lite")


def evaluate_items(model, tokenizer, items: Sequence[MathItem], *, mode: str = "auto", tau: float | None = None,
                   settings: SamplingSettings = SamplingSettings(), num_samples: int = 1,
                   tokens: ControlTokens = ControlTokens(), system_prompt: str | None = None, batch_size: int = 32,
                   benchmark: str = "", records_path: str | Path | None = None, progress: bool = True) -> list[dict]:
    """Answer and grade every item ``num_samples`` times; sample ``s`` uses seed ``settings.seed + s``.

    Returns one record per (item, sample), samples outer, items in the given order. With
    ``records_path``, records already in the file for a (benchmark, requested, id, sample) key are
    reused rather than regenerated, and each new batch is appended as soon as it is graded.
    """
    from tqdm.auto import tqdm

    requested = Routing(mode, tau).label
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = list(items)
    ids = _item_ids(items, benchmark)
    wanted = [(benchmark, requested, item_id, s) for s in range(num_samples) for item_id in ids]

    results: dict[tuple, dict] = {}
    if records_path is not None:
        keys = set(wanted)
        results = {record_key(r): r for r in read_jsonl(records_path) if record_key(r) in keys}
        if results:
            log.info("%s %s: reusing %d of %d answers from %s", benchmark, requested, len(results), len(wanted),
                     records_path)

    todo = [key for key in wanted if key not in results]
    by_id = dict(zip(ids, items))
    bar = tqdm(total=len(todo), desc=f"{benchmark or 'eval'} {requested}", disable=not progress or not todo)
    for sample in range(num_samples):
        sample_settings = replace(settings, seed=settings.seed + sample)
        pending = [key[2] for key in todo if key[3] == sample]
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            generations = generate(model, tokenizer, [by_id[i].question for i in chunk], mode=mode, tau=tau,
                                   settings=sample_settings, tokens=tokens, system_prompt=system_prompt,
                                   batch_size=batch_size)
            batch = [make_record(by_id[i], i, g, benchmark=benchmark, sample=sample, seed=sample_settings.seed,
                                 tokens=tokens) for i, g in zip(chunk, generations)]
            if records_path is not None:
                append_jsonl(records_path, batch)
            results.update((record_key(r), r) for r in batch)
            bar.update(len(chunk))
    bar.close()
    return [results[key] for key in wanted]


def make_record(item: MathItem, item_id: str, generation, *, benchmark: str, sample: int, seed: int,
                tokens: ControlTokens = ControlTokens()) -> dict:
    """One graded answer as a JSON-friendly dict (keys: :data:`RECORD_FIELDS`)."""
    scored = score_completion(generation.completion, item.gold, tokens=tokens)
    return {
        "benchmark": benchmark, "id": item_id, "question": item.question, "gold": item.gold,
        "difficulty": item.difficulty, "requested": generation.requested, "mode": generation.mode,
        "p_think": float(generation.p_think), "completion": generation.completion, "answer": generation.answer,
        "num_tokens": int(generation.num_tokens), "correct": bool(scored.correct),
        "format_error": bool(scored.format_error), "sample": sample, "seed": seed,
    }


def record_key(record: dict) -> tuple[str, str, str, int]:
    """What makes a record unique in a records file: (benchmark, requested, id, sample)."""
    return (str(record["benchmark"]), str(record["requested"]), str(record["id"]), int(record["sample"]))


def _item_ids(items: Sequence[MathItem], benchmark: str) -> list[str]:
    ids = [item.id or f"{benchmark or 'item'}-{i}" for i, item in enumerate(items)]
    seen: set[str] = set()
    dupes = sorted({i for i in ids if i in seen or seen.add(i)})
    if dupes:
        raise ValueError(f"item ids must be unique (records are keyed by id); repeated: {dupes[:5]}")
    return ids


# ---------------------------------------------------------------- think-threshold sweep

def tau_sweep(model, tokenizer, items: Sequence[MathItem], taus: Iterable[float], *,
              settings: SamplingSettings = SamplingSettings(), num_samples: int = 1,
              tokens: ControlTokens = ControlTokens(), system_prompt: str | None = None, batch_size: int = 32,
              benchmark: str = "", records_path: str | Path | None = None, progress: bool = True,
              include_ends: bool = True) -> list[dict]:
    """Accuracy / think ratio / mean tokens when routing with ``P(<think>) >= tau``, sorted by tokens.

    Each point is ``{tau, mode, n, accuracy, think_ratio, mean_tokens, format_error_rate}`` with
    ``mode="auto"``. ``include_ends`` adds ``tau=0`` (always think) and the forced-short point
    ``{tau: None, mode: "short"}`` (no tau in 0..1 guarantees short), so the curve spans both ends.
    """
    points_to_run = check_taus(taus)
    if include_ends and 0.0 not in points_to_run:
        points_to_run.append(0.0)
    common = dict(settings=settings, num_samples=num_samples, tokens=tokens, system_prompt=system_prompt,
                  batch_size=batch_size, benchmark=benchmark, records_path=records_path, progress=progress)
    runs: list[tuple[float | None, str]] = [(tau, "auto") for tau in points_to_run]
    if include_ends:
        runs.append((None, "short"))
    points = []
    for tau, mode in runs:
        records = evaluate_items(model, tokenizer, items, mode=mode, tau=tau, **common)
        summary = summarize(records)
        points.append({"tau": tau, "mode": mode, "n": summary["n"], "accuracy": summary["accuracy"],
                       "think_ratio": summary["think_ratio"], "mean_tokens": summary["mean_tokens"],
                       "format_error_rate": summary["format_error_rate"]})
    # Cheapest first; at equal cost, forced short, then the highest threshold.
    return sorted(points, key=lambda p: (p["mean_tokens"], p["think_ratio"], -(2.0 if p["tau"] is None else p["tau"])))


def check_taus(taus: Iterable) -> list[float]:
    """Validated, de-duplicated thresholds in the given order; raises on an empty list or a bad value."""
    if isinstance(taus, (str, bytes)) or taus is None:
        raise ValueError(f"taus must be a list of numbers within 0..1, got {taus!r}")
    checked: list[float] = []
    for tau in taus:
        value = Routing("auto", tau).tau
        if value not in checked:
            checked.append(value)
    if not checked:
        raise ValueError("taus is empty: give thresholds within 0..1, e.g. [0.1, 0.3, 0.5, 0.7, 0.9]")
    return checked
