"""Evaluation, the one path: items -> answers -> graded records -> summaries -> report (+ files).

    thinkless-lite eval --config mini --adapter runs/mini/rl/adapter --sweep-tau 0,0.1,0.5,0.9,1

:func:`evaluate` is what the CLI, the quickstart (after the warm-up and after DeGRPO), the benchmark
scripts and the notebooks call. Every answer is graded by the same function the RL reward uses
(:func:`thinkless_lite.rewards.score_completion`: the answer is read only after ``</think>`` /
``<short>``) and appended to ``records.jsonl`` as its batch finishes, so a killed evaluation resumes
where it stopped; records made under other generation settings are set aside, never reused. The report
(schema: :mod:`thinkless_lite.report`) holds accuracy, think ratio and tokens per benchmark and routing,
by difficulty, and the think-threshold sweep from forced short to ``tau=0`` (always think).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

from thinkless_lite.config import ConfigError, RunConfig, save_resolved
from thinkless_lite.data.items import MathItem
from thinkless_lite.generation import SamplingSettings, generate
from thinkless_lite.jsonl import append_jsonl, read_jsonl
from thinkless_lite.compat import four_bit_layout
from thinkless_lite.report import _level_order, write_report
from thinkless_lite.rewards import score_completion
from thinkless_lite.tokens import THINK, ControlTokens, Routing

log = logging.getLogger("thinkless_lite")

RECORD_FIELDS = ("benchmark", "id", "question", "gold", "difficulty", "requested", "mode", "p_think",
                 "completion", "answer", "num_tokens", "correct", "format_error", "sample", "seed")
RECORDS_FILE = "records.jsonl"
RECORDS_META_FILE = "records.meta.json"


# ---------------------------------------------------------------- records (JSONL, resumable)

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


# ---------------------------------------------------------------- summaries (pure)

def _rate(records: Sequence[dict], predicate) -> float:
    return sum(1 for r in records if predicate(r)) / len(records) if records else 0.0


def _basic_stats(records: Sequence[dict]) -> dict:
    """n, accuracy, think ratio and mean generated tokens; all 0.0 for no records."""
    return {
        "n": len(records),
        "accuracy": _rate(records, lambda r: bool(r["correct"])),
        "think_ratio": _rate(records, lambda r: r["mode"] == THINK),
        "mean_tokens": sum(r["num_tokens"] for r in records) / len(records) if records else 0.0,
    }


def _level_name(level) -> str:
    """A difficulty as a JSON key: ``3`` and ``3.0`` both become ``"3"``."""
    if isinstance(level, float) and level.is_integer():
        level = int(level)
    return str(level)


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
            levels.setdefault(_level_name(record["difficulty"]), []).append(record)
    summary["by_difficulty"] = {name: _basic_stats(levels[name]) for name in sorted(levels, key=_level_order)}
    if mix:
        weights = {_level_name(k): float(w) for k, w in mix.items() if _level_name(k) in levels}
        total = sum(weights.values())
        if total:
            summary["on_mix"] = {key: sum(w * summary["by_difficulty"][k][key] for k, w in weights.items()) / total
                                 for key in ("accuracy", "think_ratio", "mean_tokens")}
    return summary


def with_tokens_saved(per_mode: dict[str, dict]) -> dict[str, dict]:
    """Add ``tokens_saved_vs_think`` = 1 - mean tokens / forced-think mean tokens (when think ran)."""
    think = per_mode.get("think")
    if not think or not think.get("mean_tokens"):
        return dict(per_mode)
    return {mode: {**s, "tokens_saved_vs_think": 1.0 - s["mean_tokens"] / think["mean_tokens"]}
            for mode, s in per_mode.items()}


# ---------------------------------------------------------------- think-threshold sweep

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


# ---------------------------------------------------------------- the stage

def load_eval_items(cfg: RunConfig, name: str) -> list[MathItem]:
    """A benchmark's items as the config asks: the mini-world held-out set, or a named benchmark."""
    from thinkless_lite.data.benchmarks import MINIWORLD, load_benchmark, miniworld_items

    if name.strip().lower() == MINIWORLD:
        return miniworld_items(cfg, limit=cfg.eval.limit)
    return load_benchmark(name, data_file=cfg.eval.data_file, limit=cfg.eval.limit)


def adapter_identity(adapter_path: str | None) -> str | None:
    """A local adapter by its content (sha256 of its config and weights), so a run folder that was copied or
    moved keeps its records; a hub id (or nothing) as given."""
    if not adapter_path or not Path(adapter_path).is_dir():
        return adapter_path
    folder = Path(adapter_path)
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        if (folder / name).is_file():
            digest.update(name.encode())
            with open(folder / name, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _generation_fingerprint(cfg: RunConfig) -> dict:
    """What decides an answer; records made under another fingerprint must not be reused."""
    e, m = cfg.eval, cfg.model
    return {"model": m.name_or_path, "adapter": adapter_identity(m.adapter_path), "max_new_tokens": e.max_new_tokens,
            "temperature": e.temperature, "top_p": e.top_p, "seed": cfg.seed, "system_prompt": m.system_prompt,
            "chat_template": m.chat_template, "control_tokens": list(m.control_tokens.all),
            "load_in_4bit": m.load_in_4bit, "dtype": m.dtype, "data_file": e.data_file, "per_level": e.per_level,
            "miniworld": dataclasses.asdict(cfg.miniworld)}


def _prepare_records(out: Path, cfg: RunConfig) -> Path:
    """records.jsonl to resume from, set aside (renamed, never deleted) if it came from other settings."""
    records = out / RECORDS_FILE
    meta = out / RECORDS_META_FILE
    fingerprint = json.loads(json.dumps(_generation_fingerprint(cfg), default=str))
    if records.exists() and meta.exists():
        old = json.loads(meta.read_text(encoding="utf-8"))
        if old != fingerprint:
            stale = out / f"records.stale-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
            changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            log.warning("generation settings changed (%s); moved old records to %s", ", ".join(changed), stale)
            records.rename(stale)
    meta.write_text(json.dumps(fingerprint, indent=2) + "\n", encoding="utf-8")
    return records


def evaluate(cfg: RunConfig, *, out_dir: str | Path | None = None, model=None, tokenizer=None,
             modes: Sequence[str] | None = None, sweep: bool = True, progress: bool = True) -> dict:
    """Evaluate every benchmark x routing of ``cfg.eval`` (``modes`` overrides its list; ``sweep=False``
    skips the tau sweep) and write the report. ``model``/``tokenizer``: an already loaded model, else
    ``cfg.model`` (with its ``adapter_path``) is loaded for inference.

    Outputs in ``out_dir`` (default ``<run_dir>/eval``): ``resolved.yaml``, ``records.jsonl``
    (resumable), ``report.json``, ``report.md``, ``report.png``. Returns the report dict.
    """
    began = time.time()
    e = cfg.eval
    named = [b for b in e.benchmarks if b.strip().lower() != "miniworld"]
    if e.data_file is not None and len(named) > 1:
        raise ConfigError(f"eval.data_file replaces one benchmark's source, but eval.benchmarks names {named}; "
                          "run one benchmark per data file")
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither (then cfg.model is loaded)")
    out = Path(out_dir) if out_dir is not None else cfg.run_dir / "eval"
    items = {name: load_eval_items(cfg, name) for name in e.benchmarks}  # bad data fails before a model loads
    if model is None:
        from thinkless_lite.model import load_model

        loaded = load_model(cfg.model, trainable=False, seed=cfg.seed)
        model, tokenizer = loaded.model, loaded.tokenizer
    # Written once the data and the model loaded: a start that fails leaves the run as it was.
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out)
    records_path = _prepare_records(out, cfg)
    settings = SamplingSettings(max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p,
                                seed=cfg.seed)
    common = dict(settings=settings, num_samples=e.num_samples, tokens=cfg.model.control_tokens,
                  system_prompt=cfg.model.system_prompt, batch_size=e.batch_size, records_path=records_path,
                  progress=progress)
    results: dict[str, dict] = {}
    sweeps: dict[str, list[dict]] = {}
    for name, bench_items in items.items():
        mix = cfg.miniworld.difficulty_weights if name == "miniworld" else None
        per_mode = {}
        for mode in (modes or e.modes):
            routing = Routing(mode, e.tau if mode == "auto" else None)
            records = evaluate_items(model, tokenizer, bench_items, mode=routing.mode, tau=routing.tau,
                                     benchmark=name, **common)
            per_mode[routing.label] = summarize(records, mix)
        results[name] = with_tokens_saved(per_mode)
        log.info("%s: %s", name, ", ".join(f"{m} acc {s['accuracy']:.3f} think {s['think_ratio']:.2f} "
                                           f"tokens {s['mean_tokens']:.1f}" for m, s in results[name].items()))
        if sweep and e.sweep_tau:
            sweeps[name] = tau_sweep(model, tokenizer, bench_items, e.sweep_tau, benchmark=name, **common)
    report = {"model": cfg.model.name_or_path, "adapter": cfg.model.adapter_path,
              "settings": {"max_new_tokens": e.max_new_tokens, "temperature": e.temperature, "top_p": e.top_p,
                           "num_samples": e.num_samples, "seed": cfg.seed, "tau": e.tau,
                           **({"4bit_layout": layout} if (layout := four_bit_layout(model)) else {})},
              "num_items": {name: len(v) for name, v in items.items()}, "benchmarks": results, "tau_sweeps": sweeps,
              "out_dir": str(out), "seconds": round(time.time() - began, 1)}
    write_report(report, out)
    return report


def main(cfg: RunConfig) -> dict:
    """``thinkless-lite eval``: evaluate ``cfg.model`` (+ ``model.adapter_path``) as ``cfg.eval`` says."""
    from thinkless_lite.stages.setup import prepare_stage

    return evaluate(cfg, out_dir=prepare_stage(cfg, "eval", backend=False))
