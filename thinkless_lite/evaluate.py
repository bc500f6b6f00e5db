"""Evaluation: accuracy, think ratio and token cost on math benchmarks, and the think-threshold curve.

Read top to bottom:

1. ``evaluate_items`` answers every (item, sample) with :func:`thinkless_lite.infer.generate` and
   grades it with :func:`thinkless_lite.rewards.score_completion` (the answer is read only from the
   part after ``</think>`` / ``<short>``). One JSON-friendly record per answer; with
   ``records_path`` each batch is appended to a JSONL as it finishes, and answers already in the
   file are reused, so a killed evaluation resumes where it stopped.
2. ``summarize`` turns records into numbers (pure).
3. ``tau_sweep`` routes with ``P(<think>) >= tau`` over a list of thresholds, from forced short
   (reported as ``{"tau": None, "mode": "short"}``) to ``tau = 0`` (always think): the
   accuracy / tokens trade-off curve.
4. ``write_report`` writes ``report.json``, ``report.md`` and ``report.png``.
5. ``run_eval`` is the stage entry point: a :class:`RunConfig` in, a report (and its files) out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

from thinkless_lite.config import ConfigError, RunConfig, save_resolved
from thinkless_lite.data.items import MathItem
from thinkless_lite.infer import INFERENCE_MODES, SamplingSettings, generate
from thinkless_lite.jsonl import append_jsonl, read_jsonl
from thinkless_lite.rewards import score_completion
from thinkless_lite.tokens import THINK, ControlTokens

log = logging.getLogger("thinkless_lite")

RECORD_FIELDS = ("benchmark", "id", "question", "gold", "difficulty", "requested", "mode", "p_think",
                 "completion", "answer", "num_tokens", "correct", "format_error", "sample", "seed")
RECORDS_FILE = "records.jsonl"
RECORDS_META_FILE = "records.meta.json"


# ---------------------------------------------------------------- routing names and checks

def check_tau(tau) -> float:
    """A threshold on P(<think>): a number within 0..1 (0 = always think). Anything else raises."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or math.isnan(tau) or not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be a number within 0..1 (route to think when P(<think>) >= tau; 0 = always "
                         f"think); got {tau!r}. For forced short use mode='short' (the sweep adds that point itself).")
    return float(tau)


def requested_label(mode: str, tau: float | None = None) -> str:
    """The routing's name, as :func:`generate` writes it: auto | think | short | tau=<value>."""
    if mode not in INFERENCE_MODES:
        raise ValueError(f"mode must be one of {INFERENCE_MODES}, got {mode!r}")
    if tau is None:
        return mode
    if mode != "auto":
        raise ValueError(f"tau thresholds the model's own choice, so it needs mode='auto'; got mode={mode!r}")
    return f"tau={check_tau(tau):g}"


# ---------------------------------------------------------------- records (JSONL, resumable)

def record_key(record: dict) -> tuple[str, str, str, int]:
    """What makes a record unique in a records file: (benchmark, requested, id, sample)."""
    return (str(record["benchmark"]), str(record["requested"]), str(record["id"]), int(record["sample"]))


def read_records(path: str | Path) -> list[dict]:
    """Records from a JSONL file; a missing file is empty, a torn last line (a kill mid-write) is skipped."""
    return read_jsonl(path)


def append_records(path: str | Path, records: Sequence[dict]) -> None:
    """Append records as JSON lines, after cutting a torn last line."""
    append_jsonl(path, records)


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

    requested = requested_label(mode, tau)
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
        results = {record_key(r): r for r in read_records(records_path) if record_key(r) in keys}
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
                append_records(records_path, batch)
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


def _level_order(name: str):
    try:
        return (0, float(name), "")
    except ValueError:
        return (1, 0.0, name)


def summarize(records: Iterable[dict]) -> dict:
    """``n, accuracy, think_ratio, mean_tokens, format_error_rate`` and ``by_difficulty``.

    ``by_difficulty`` maps each level (a string, ordered numerically) to its own ``n, accuracy,
    think_ratio, mean_tokens``; records without a difficulty are left out of it.
    """
    records = list(records)
    summary = _basic_stats(records)
    summary["format_error_rate"] = _rate(records, lambda r: bool(r["format_error"]))
    levels: dict[str, list[dict]] = {}
    for record in records:
        if record.get("difficulty") is not None:
            levels.setdefault(_level_name(record["difficulty"]), []).append(record)
    summary["by_difficulty"] = {name: _basic_stats(levels[name]) for name in sorted(levels, key=_level_order)}
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
        value = check_tau(tau)
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


# ---------------------------------------------------------------- report files

def _benchmarks_of(report: dict) -> dict[str, dict]:
    if "benchmarks" in report:
        return report["benchmarks"]
    modes = {m: report[m] for m in INFERENCE_MODES if isinstance(report.get(m), dict)}
    return {"eval": modes} if modes else {}


def _sweeps_of(report: dict) -> dict[str, list[dict]]:
    """Sweep points by benchmark; unlabelled points belong to the only benchmark (else to "eval")."""
    if isinstance(report.get("tau_sweeps"), dict):
        return {k: v for k, v in report["tau_sweeps"].items() if v}
    sweep = report.get("tau_sweep")
    if isinstance(sweep, dict):
        return {k: v for k, v in sweep.items() if v}
    names = list(_benchmarks_of(report))
    default = names[0] if len(names) == 1 else "eval"
    sweeps: dict[str, list[dict]] = {}
    for point in sweep or []:
        sweeps.setdefault(point.get("benchmark", default), []).append(point)
    return sweeps


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _num(value) -> str:
    return "—" if value is None else f"{value:.1f}"


def _tau_name(point: dict) -> str:
    return "— (forced short)" if point.get("tau") is None else f"{point['tau']:g}"


def render_markdown(report: dict) -> str:
    """The report as Markdown: a table per benchmark, per-difficulty tables, the tau sweep tables."""
    lines = ["# Evaluation report", ""]
    facts = [f"{key}: `{report[key]}`" for key in ("model", "adapter") if key in report]
    if report.get("settings"):
        facts.append(", ".join(f"{k}={v}" for k, v in report["settings"].items()))
    if report.get("seconds") is not None:
        facts.append(f"{report['seconds']:.0f} s")
    lines += ["; ".join(facts), "",
              "accuracy = share of answers graded correct (answer read after `</think>` / `<short>`); "
              "think ratio = share of answers that chose `<think>`; tokens saved = 1 - mean tokens / mean "
              "tokens of forced think.", ""]
    sweeps = _sweeps_of(report)
    benchmarks = _benchmarks_of(report)
    for name in list(dict.fromkeys([*benchmarks, *sweeps])):
        per_mode = benchmarks.get(name, {})
        lines += [f"## {name}", ""]
        if per_mode:
            lines += ["| mode | n | accuracy | think ratio | mean tokens | tokens saved vs think | format errors |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
        for mode, s in per_mode.items():
            lines.append(f"| {mode} | {s['n']} | {_pct(s['accuracy'])} | {_pct(s['think_ratio'])} | "
                         f"{_num(s['mean_tokens'])} | {_pct(s.get('tokens_saved_vs_think'))} | "
                         f"{_pct(s.get('format_error_rate'))} |")
        lines.append("")
        levelled = {mode: s["by_difficulty"] for mode, s in per_mode.items() if s.get("by_difficulty")}
        if levelled:
            levels = sorted({level for by in levelled.values() for level in by}, key=_level_order)
            header = " | ".join(f"{m} accuracy | {m} think ratio | {m} tokens" for m in levelled)
            lines += [f"### {name}: by difficulty", "", f"| level | n | {header} |",
                      "|---:|---:|" + "---:|" * (3 * len(levelled))]
            for level in levels:
                cells = [str(next((by[level]["n"] for by in levelled.values() if level in by), 0))]
                for by in levelled.values():
                    d = by.get(level)
                    cells += ([_pct(d["accuracy"]), _pct(d["think_ratio"]), _num(d["mean_tokens"])] if d
                              else ["—", "—", "—"])
                lines.append(f"| {level} | " + " | ".join(cells) + " |")
            lines.append("")
        if sweeps.get(name):
            lines += [f"### {name}: think-threshold sweep (think when P(<think>) >= tau)", "",
                      "| tau | routing | n | accuracy | think ratio | mean tokens |", "|---|---|---:|---:|---:|---:|"]
            for p in sweeps[name]:
                lines.append(f"| {_tau_name(p)} | {p.get('mode', 'auto')} | {p.get('n', '')} | {_pct(p['accuracy'])} | "
                             f"{_pct(p['think_ratio'])} | {_num(p['mean_tokens'])} |")
            lines.append("")
    return "\n".join(lines)


def _grouped_bars(ax, benchmarks: dict[str, dict], key: str, title: str) -> None:
    names = list(benchmarks)
    modes = list(dict.fromkeys(m for per_mode in benchmarks.values() for m in per_mode))
    width = 0.8 / max(len(modes), 1)
    for j, mode in enumerate(modes):
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(names))]
        ys = [benchmarks[n].get(mode, {}).get(key, 0.0) for n in names]
        ax.bar(xs, ys, width=width, label=mode)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8)


def plot_report(report: dict, path: str | Path) -> Path:
    """Accuracy and think ratio by mode; the accuracy-vs-tokens curve; think ratio by difficulty."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, safe in threads and servers

    benchmarks = _benchmarks_of(report)
    sweeps = _sweeps_of(report)
    by_level = {name: (per_mode.get("auto") or next(iter(per_mode.values())))
                for name, per_mode in benchmarks.items() if per_mode}
    by_level = {name: s["by_difficulty"] for name, s in by_level.items() if s.get("by_difficulty")}
    panels = ["accuracy", "think_ratio"] + (["sweep"] if sweeps else []) + (["difficulty"] if by_level else [])
    ncols = 2
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(6 * ncols, 4.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        if panel == "accuracy":
            _grouped_bars(ax, benchmarks, "accuracy", "Accuracy by mode")
        elif panel == "think_ratio":
            _grouped_bars(ax, benchmarks, "think_ratio", "Think ratio by mode")
        elif panel == "sweep":
            for name, points in sweeps.items():
                points = sorted(points, key=lambda p: p["mean_tokens"])
                line = ax.plot([p["mean_tokens"] for p in points], [p["accuracy"] for p in points], "o-", label=name)[0]
                for p in points:
                    label = "short" if p.get("tau") is None else f"τ={p['tau']:g}"
                    ax.annotate(label, (p["mean_tokens"], p["accuracy"]), textcoords="offset points", xytext=(4, 4),
                                fontsize=7)
                auto = benchmarks.get(name, {}).get("auto")
                if auto:
                    ax.plot([auto["mean_tokens"]], [auto["accuracy"]], "*", markersize=12, color=line.get_color(),
                            label=f"{name}: sampled choice")
            ax.set_xlabel("mean generated tokens")
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.05)
            ax.set_title("Think-threshold trade-off")
            ax.legend(fontsize=8)
        elif panel == "difficulty":
            for name, levels in by_level.items():
                xs = [_level_order(k)[1] if _level_order(k)[0] == 0 else i for i, k in enumerate(levels)]
                ax.plot(xs, [d["think_ratio"] for d in levels.values()], "o-", label=name)
            ax.set_xlabel("difficulty level")
            ax.set_ylabel("think ratio")
            ax.set_ylim(-0.02, 1.05)
            ax.set_title("Think ratio by difficulty (auto)")
            ax.legend(fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.png`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    paths["md"].write_text(render_markdown(report) + "\n", encoding="utf-8")
    plot_report(report, paths["png"])
    return paths


# ---------------------------------------------------------------- the eval stage

def load_eval_items(cfg: RunConfig, name: str) -> list[MathItem]:
    """A benchmark's items as the config asks: mini-world held-out set, or a named benchmark."""
    from thinkless_lite.data.benchmarks import MINIWORLD, load_benchmark
    from thinkless_lite.data.miniworld import MiniWorld, benchmark_items

    if name.strip().lower() == MINIWORLD:
        world = MiniWorld(**dataclasses.asdict(cfg.miniworld))
        return benchmark_items(limit=cfg.eval.limit, per_level=cfg.eval.per_level, world=world)
    return load_benchmark(name, data_file=cfg.eval.data_file, limit=cfg.eval.limit)


def _generation_fingerprint(cfg: RunConfig) -> dict:
    """What decides an answer; records made under another fingerprint must not be reused."""
    e, m = cfg.eval, cfg.model
    return {"model": m.name_or_path, "adapter": m.adapter_path, "max_new_tokens": e.max_new_tokens,
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


def run_eval(cfg: RunConfig, *, out_dir: str | Path | None = None, model=None, tokenizer=None) -> dict:
    """Evaluate every benchmark x mode of ``cfg.eval`` (then the tau sweep) and write the report.

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
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out)
    records_path = _prepare_records(out, cfg)
    if model is None:
        from thinkless_lite.model import load_model

        loaded = load_model(cfg.model, trainable=False, seed=cfg.seed)
        model, tokenizer = loaded.model, loaded.tokenizer

    settings = SamplingSettings(max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p,
                                seed=cfg.seed)
    common = dict(settings=settings, num_samples=e.num_samples, tokens=cfg.model.control_tokens,
                  system_prompt=cfg.model.system_prompt, batch_size=e.batch_size, records_path=records_path)
    items = {name: load_eval_items(cfg, name) for name in e.benchmarks}
    results: dict[str, dict] = {}
    for name, bench_items in items.items():
        per_mode = {}
        for mode in e.modes:
            tau = e.tau if mode == "auto" else None
            records = evaluate_items(model, tokenizer, bench_items, mode=mode, tau=tau, benchmark=name, **common)
            per_mode[mode] = summarize(records)
        results[name] = with_tokens_saved(per_mode)
        log.info("%s: %s", name, ", ".join(f"{m} acc {s['accuracy']:.3f} think {s['think_ratio']:.2f} "
                                           f"tokens {s['mean_tokens']:.1f}" for m, s in results[name].items()))
    sweeps: dict[str, list[dict]] = {}
    if e.sweep_tau:
        for name, bench_items in items.items():
            sweeps[name] = tau_sweep(model, tokenizer, bench_items, e.sweep_tau, benchmark=name, **common)

    report: dict = {
        "benchmarks": results,
        "tau_sweeps": sweeps,
        "tau_sweep": [{"benchmark": name, **p} for name, points in sweeps.items() for p in points],
        "model": cfg.model.name_or_path,
        "adapter": cfg.model.adapter_path,
        "settings": {"max_new_tokens": e.max_new_tokens, "temperature": e.temperature, "top_p": e.top_p,
                     "num_samples": e.num_samples, "seed": cfg.seed, "tau": e.tau},
        "num_items": {name: len(v) for name, v in items.items()},
        "out_dir": str(out),
        "seconds": time.time() - began,
    }
    if len(results) == 1:
        report.update(next(iter(results.values())))
    write_report(report, out)
    return report
