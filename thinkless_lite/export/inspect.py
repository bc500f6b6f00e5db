"""Inspect an adapter before exporting it: is it a thinkless adapter, what is its base, and which recipe and
evaluation reports of its run (``runs/<name>/{warmup,rl}/adapter``) describe it.

Every check fails with an :class:`ExportError` that says what to pass instead, before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinkless_lite.config import ConfigError, adapter_folder_problem, load_config, to_dict
from thinkless_lite.export.folder import ExportError
from thinkless_lite.export.hub import is_hub_id
from thinkless_lite.base import resolve_model_path
from thinkless_lite.tokens import ControlTokens

log = logging.getLogger("thinkless_lite")

STAGES = ("warmup", "rl")


def eval_report(report: dict) -> dict | None:
    """The evaluation report in a report file: ``thinkless-lite eval``'s is one, the quickstart's holds its
    final one under ``final`` (schema: :mod:`thinkless_lite.report`)."""
    report = report.get("final", report)
    return report if isinstance(report.get("benchmarks"), dict) and report["benchmarks"] else None


def combine_reports(reports: list[dict]) -> dict | None:
    """Evaluation reports -> one; a benchmark already present is kept from the earlier report."""
    combined: dict = {"benchmarks": {}, "tau_sweeps": {}}
    for report in reports:
        for key in ("benchmarks", "tau_sweeps"):
            for name, value in report.get(key, {}).items():
                combined[key].setdefault(name, value)
        if "settings" in report:
            combined.setdefault("settings", report["settings"])
    return combined if combined["benchmarks"] else None



def stage_of(adapter: Path) -> tuple[str | None, Path | None]:
    """(``warmup``|``rl``, run folder) for ``runs/<name>/<stage>/adapter``; (None, None) otherwise."""
    if adapter.name == "adapter" and adapter.parent.name in STAGES:
        return adapter.parent.name, adapter.parent.parent
    return None, None


def find_recipe(adapter: Path) -> Path | None:
    stage, run_dir = stage_of(adapter)
    candidates = [adapter / "resolved.yaml"]
    if stage:
        candidates += [adapter.parent / "resolved.yaml", run_dir / "resolved.yaml"]
    return next((p for p in candidates if p.is_file()), None)


def _same_adapter(recorded, adapter: Path) -> bool:
    """Whether a report's ``adapter`` entry names this folder (absolute, or relative to wherever it ran)."""
    if not recorded:
        return False
    path = Path(str(recorded))
    here = adapter.resolve()
    if path.is_absolute():
        return path.resolve() == here
    if (Path.cwd() / path).resolve() == here:
        return True
    parts = [p for p in path.parts if p not in (".", "")]
    return bool(parts) and list(here.parts[-len(parts):]) == parts


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("skipping %s: not readable JSON (%s)", path, err)
        return None
    return data if isinstance(data, dict) else None


def find_reports(adapter: Path) -> list[tuple[Path, dict]]:
    """Evaluation reports of this adapter in its run folder, normalised, most specific first.

    ``<run>/eval/report.json`` and ``<run>/eval/<benchmark>/report.json`` count when their ``adapter`` is this
    folder; the quickstart's ``<run>/report.json`` describes ``rl/adapter`` (its ``after_warmup`` section
    describes ``warmup/adapter``).
    """
    stage, run_dir = stage_of(adapter)
    if stage is None:
        return []
    found = []
    eval_dir = run_dir / "eval"
    for path in [eval_dir / "report.json", *sorted(eval_dir.glob("*/report.json"))]:
        report = _read_json(path) if path.is_file() else None
        if report is None:
            continue
        if _same_adapter(report.get("adapter"), adapter) and eval_report(report):
            found.append((path, eval_report(report)))
        else:
            log.info("not using %s: it evaluated %s, not this adapter", path, report.get("adapter"))
    quick = run_dir / "report.json"
    report = _read_json(quick) if quick.is_file() else None
    if report is not None:
        part = report.get("final") if stage == "rl" else report.get("after_warmup")
        if isinstance(part, dict) and eval_report(part) and _same_adapter(part.get("adapter"), adapter):
            found.append((quick, eval_report(part)))
    return found


@dataclass
class AdapterInfo:
    adapter: Path
    peft_config: dict
    base: str                       # what to load the base from (local folder or hub id)
    base_hub_id: str | None
    tokens: ControlTokens
    stage: str | None
    recipe: dict | None
    recipe_path: Path | None
    report: dict | None
    report_paths: list = field(default_factory=list)
    tokenizer: Any = None


def _load_recipe(path: Path, explicit: bool) -> dict | None:
    try:
        return to_dict(load_config(path))
    except ConfigError as err:
        if explicit:
            raise ExportError(f"--config {path}: {err}") from err
        log.warning("ignoring the run's recipe %s: %s", path, err)
        return None


def inspect_adapter(adapter: str | os.PathLike, *, report: str | os.PathLike | None = None,
                    config: str | os.PathLike | None = None) -> AdapterInfo:
    """Check that ``adapter`` is a thinkless_lite adapter and gather its base, tokens, recipe and report."""
    from transformers import AutoTokenizer  # not at import: see thinkless_lite.export.merge

    folder = Path(adapter)
    if problem := adapter_folder_problem(folder, "--adapter"):
        raise ExportError(problem)
    try:
        peft_config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except ValueError as err:
        raise ExportError(f"{folder}/adapter_config.json is not valid JSON ({err}); re-save the adapter") from err
    if peft_config.get("peft_type") != "LORA" or not (folder / "adapter_model.safetensors").is_file():
        raise ExportError(f"{folder} is not a thinkless adapter: expected a LoRA adapter with adapter_model.safetensors "
                          f"(found peft_type={peft_config.get('peft_type')!r}); export a folder saved by a thinkless-lite stage")
    if not (folder / "tokenizer_config.json").is_file():
        raise ExportError(f"{folder} is not a thinkless adapter: it has no tokenizer beside it (thinkless_lite saves the "
                          "tokenizer that holds the control tokens with every adapter); export a folder saved by a "
                   "thinkless-lite stage")
    recipe_path = Path(config) if config is not None else find_recipe(folder)
    if config is not None and not recipe_path.is_file():
        raise ExportError(f"--config {recipe_path}: no such file")
    recipe = _load_recipe(recipe_path, explicit=config is not None) if recipe_path else None
    m = (recipe or {}).get("model", {})
    tokens = ControlTokens(m.get("short_token", "<short>"), m.get("think_token", "<think>"),
                           m.get("think_end_token", "</think>"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens.all if t not in vocab]
    if missing:
        raise ExportError(f"{folder} is not a thinkless adapter: its tokenizer has no {', '.join(missing)} token "
                          "(a thinkless adapter's tokenizer holds the control tokens); if the run used other control "
                          "tokens, pass its recipe with --config")
    if report is not None:
        report_path = Path(report)
        data = _read_json(report_path) if report_path.is_file() else None
        if data is None:
            raise ExportError(f"--report {report_path}: no such file or not JSON; give a report.json written by "
                              "`thinkless-lite eval` or `thinkless-lite quickstart`")
        normalised = eval_report(data)
        if normalised is None:
            raise ExportError(f"--report {report_path} holds no benchmark results (no 'benchmarks'); give a report.json "
                              "written by `thinkless-lite eval` or `thinkless-lite quickstart`")
        found = [(report_path, normalised)]
    else:
        found = find_reports(folder)
    stage, _ = stage_of(folder)
    recorded = peft_config.get("base_model_name_or_path") or ""
    recipe_name = m.get("name_or_path")
    candidates = [c for c in (recorded, resolve_model_path(recipe_name) if recipe_name else None) if c]
    base = next((c for c in candidates if Path(c).exists()), None) or next((c for c in candidates if is_hub_id(c)), None)
    if base is None:
        raise ExportError(f"{folder}: its base model {recorded or recipe_name!r} is neither a local folder here nor a hub "
                          "id; pass the run's recipe with --config (model.name_or_path)")
    hub = next((c for c in (recipe_name, recorded) if c and is_hub_id(c)), None)
    return AdapterInfo(adapter=folder, peft_config=peft_config, base=base, base_hub_id=hub, tokens=tokens,
                       stage=stage, recipe=recipe, recipe_path=recipe_path, report=combine_reports([r for _, r in found]),
                       report_paths=[p for p, _ in found], tokenizer=tokenizer)
