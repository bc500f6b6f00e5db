"""Evaluation, the one path: items -> graded records -> summaries -> report (+ files).

    thinkless-lite eval --config mini --adapter runs/mini/rl/adapter --sweep-tau 0,0.1,0.5,0.9,1

:func:`evaluate` is what the CLI, the quickstart (after the warm-up and after DeGRPO), the benchmark
scripts and the notebooks call. It reads top to bottom: the items, the model, the run folder, then per
benchmark the graded records of every routing (:mod:`thinkless_lite.records`, resumable; records made under
other generation settings are set aside, never reused), their summaries (:mod:`thinkless_lite.summaries`)
and the think-threshold sweep, and last the report (schema and renderer: :mod:`thinkless_lite.report`):
accuracy, think ratio and tokens per benchmark and routing, by difficulty, and the sweep from forced short to
``tau=0`` (always think).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Sequence

from thinkless_lite.compat import four_bit_layout
from thinkless_lite.config import ConfigError, RunConfig, save_resolved
from thinkless_lite.data.items import MathItem
from thinkless_lite.generation import SamplingSettings
from thinkless_lite.records import evaluate_items, tau_sweep
from thinkless_lite.report import write_report
from thinkless_lite.summaries import summarize, with_tokens_saved
from thinkless_lite.tokens import Routing

log = logging.getLogger("thinkless_lite")

RECORDS_FILE = "records.jsonl"
RECORDS_META_FILE = "records.meta.json"


def main(cfg: RunConfig) -> dict:
    """``thinkless-lite eval``: evaluate ``cfg.model`` (+ ``model.adapter_path``) as ``cfg.eval`` says."""
    from thinkless_lite.stages.setup import prepare_stage

    return evaluate(cfg, out_dir=prepare_stage(cfg, "eval", backend=False))


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


def load_eval_items(cfg: RunConfig, name: str) -> list[MathItem]:
    """A benchmark's items as the config asks: the mini-world held-out set, or a named benchmark."""
    from thinkless_lite.data.benchmarks import MINIWORLD, load_benchmark, miniworld_items

    if name.strip().lower() == MINIWORLD:
        return miniworld_items(cfg, limit=cfg.eval.limit)
    return load_benchmark(name, data_file=cfg.eval.data_file, limit=cfg.eval.limit)


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


def _generation_fingerprint(cfg: RunConfig) -> dict:
    """What decides an answer; records made under another fingerprint must not be reused."""
    e, m = cfg.eval, cfg.model
    return {"model": m.name_or_path, "adapter": adapter_identity(m.adapter_path), "max_new_tokens": e.max_new_tokens,
            "temperature": e.temperature, "top_p": e.top_p, "seed": cfg.seed, "system_prompt": m.system_prompt,
            "chat_template": m.chat_template, "control_tokens": list(m.control_tokens.all),
            "load_in_4bit": m.load_in_4bit, "dtype": m.dtype, "data_file": e.data_file, "per_level": e.per_level,
            "miniworld": dataclasses.asdict(cfg.miniworld)}


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
