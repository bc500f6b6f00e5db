"""Share what you trained: a folder that plain transformers / PEFT / vLLM load, a model card, the hub.

    thinkless-lite export --adapter runs/quickstart/rl/adapter --out runs/quickstart/export
    thinkless-lite export --adapter runs/quickstart/rl/adapter --out runs/quickstart/merged --merge
    thinkless-lite export --adapter runs/r1/rl/adapter --out runs/r1/export --push-to-hub you/thinkless-r1 --private
    thinkless-lite export --out runs/r1/export --push-to-hub you/thinkless-r1     # push a finished export later

Two kinds of export, each with a model card (``README.md``) and ``thinkless_export.json``:

* **adapter** (default): the LoRA weights and the trained control-token rows (MBs, not the embedding tables), the tokenizer
  with the control tokens, a distinct pad token and the neutralised chat template. It loads with plain
  PEFT onto the named base: ``AutoPeftModelForCausalLM.from_pretrained(folder)`` in one line (PEFT
  resizes the base to the tokenizer itself), or ``PeftModel.from_pretrained`` after
  ``base.resize_token_embeddings(len(tokenizer))``. Every trained row's full value is in the adapter,
  so however the loader initialises the new rows, the model is the one that was trained.
* **merged** (``--merge``): the base reloaded from its own checkpoint in its own dtype (16-bit for real
  models; the shipped mini base is stored in fp32 and stays fp32), resized, the adapter merged
  (``merge_and_unload``: LoRA into the linear layers, the control rows into the embedding and the tied or
  untied head), saved as safetensors with tokenizer, chat template and a generation config whose end and
  pad ids are the tokenizer's. ``AutoModelForCausalLM.from_pretrained(folder)`` then answers with the
  control token first, in transformers alone (and the folder serves as is in vLLM).

Why not merge into the 4-bit base the adapter was trained on: NF4 is a lossy, training-time stand-in
for the base's weights. Folding ``B @ A`` into 4-bit weights would quantise the update again (it is
small next to an NF4 step, so most of it would round away), and dequantising first would ship a
degraded copy of the base. Merged into the original 16-bit weights, the result is ``W + B @ A`` exactly,
which is what a QLoRA adapter is meant to be applied to, and what every other tool loads.

The card's numbers come from the run's evaluation report (``<run>/eval/report.json``,
``<run>/eval/<benchmark>/report.json`` or the quickstart's ``<run>/report.json``, found relative to
``runs/<name>/{warmup,rl}/adapter``, or ``--report``); its recipe from the stage's ``resolved.yaml``
(or ``--config``). Without a report the card says so and gives no numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from thinkless_lite.tokens import ControlTokens

log = logging.getLogger("thinkless_lite")

MARKER = "thinkless_export.json"
CARD = "README.md"
REPORT_COPY = "eval_report.json"
RECIPE_COPY = "training_recipe.yaml"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
DTYPES = ("auto", "float32", "bfloat16", "float16")
STAGES = ("warmup", "rl")
DEFAULT_TAU = 0.5


class ExportError(RuntimeError):
    """An export that cannot go ahead as asked; the message says what to do instead."""


def _say(message: str) -> None:
    """A progress line (export steps take seconds to minutes on a real model)."""
    print(f"export: {message}", flush=True)


# ---------------------------------------------------------------- pure helpers

def is_hub_id(name: str | None) -> bool:
    """``owner/name`` that is not a local path, a ``.gguf`` file or the packaged mini base."""
    from thinkless_lite.model import MINI_BASE_NAME

    if not name or name == MINI_BASE_NAME or name.lower().endswith(".gguf"):
        return False
    if name.startswith(("/", ".", "~")) or Path(name).exists():
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) is not None


def check_repo_id(repo_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", repo_id or "") or "--" in repo_id or ".." in repo_id:
        raise ExportError(f"--push-to-hub {repo_id!r} is not a hub repository id; write it as your-name/model-name")
    return repo_id


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


def results_table(report: dict | None) -> list[str]:
    """The card's results: the report's tables (:func:`thinkless_lite.report.markdown_tables`), or a plain
    sentence when there is no report, never a number."""
    from thinkless_lite.report import markdown_tables

    if not report or not report.get("benchmarks"):
        return ["No evaluation report was found for this adapter, so this card gives no accuracy or token "
                "numbers. Evaluate it with `thinkless-lite eval --config <recipe> --adapter <adapter folder>` "
                "and export again (or pass `--report <run>/eval/report.json`)."]
    return ["accuracy: answers graded correct (the answer is read after `</think>` or `<short>`); think ratio: "
            "answers that opened with `<think>`; mean tokens: generated tokens per answer, control token included; "
            "auto: the model chooses, think / short: forced.", "", *markdown_tables(report)]


def _get(recipe: dict, dotted: str, default=None):
    node: Any = recipe
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def recipe_datasets(recipe: dict | None, stage: str | None) -> list[str]:
    """Hub dataset ids the recipe trained on (local files and the mini-world are not hub datasets)."""
    if not recipe:
        return []
    found = []
    if _get(recipe, "warmup.data.source") in ("paired", "generate"):
        found.append(_get(recipe, "warmup.data.path"))
    if stage != "warmup":
        found.append(_get(recipe, "rl.data.source"))
    return [d for d in dict.fromkeys(found) if isinstance(d, str) and is_hub_id(d)]


def recipe_lines(recipe: dict | None, stage: str | None) -> list[str]:
    """Markdown bullet lines: base, LoRA, warm-up and DeGRPO settings of the run. Pure."""
    if not recipe:
        return ["The run's recipe (`resolved.yaml` beside the adapter's stage) was not found, so it is not recorded "
                "here; pass `--config <recipe.yaml>` to include it."]
    g = lambda key, default=None: _get(recipe, key, default)
    quant = "QLoRA: LoRA on a 4-bit NF4 base" if g("model.load_in_4bit") and g("model.backend") != "full" else \
        "LoRA on a full-precision base"
    lines = [f"* **Base**: `{g('model.name_or_path')}`; {quant} (backend `{g('model.backend')}`), "
             f"r={g('model.lora_r')}, alpha={g('model.lora_alpha')}, dropout={g('model.lora_dropout')}, "
             f"on {', '.join(g('model.lora_target_modules') or [])}; control-token rows trained: "
             f"`{g('model.train_control_rows')}` (`{g('model.short_token')}`, `{g('model.think_token')}`, "
             f"`{g('model.think_end_token')}`); max sequence {g('model.max_seq_length')} tokens; seed {g('seed')}."]
    source = g("warmup.data.source")
    data = f"`{source}`" + (f" (`{g('warmup.data.path')}`)" if g("warmup.data.path") else "")
    lines.append(f"* **Stage 1, warm-up distillation** (SFT on completions): data {data}, "
                 f"{g('warmup.data.num_examples')} examples, {g('warmup.data.short_share')} of them short; "
                 f"{g('warmup.max_steps')} steps of {g('warmup.per_device_train_batch_size')} x "
                 f"{g('warmup.gradient_accumulation_steps')} examples, learning rate {g('warmup.learning_rate')} "
                 f"({g('warmup.lr_scheduler_type')}).")
    if stage == "warmup":
        lines.append("* **Stage 2, DeGRPO**: not applied: this is the warm-up adapter.")
        return lines
    reward = g("rl.reward", {}) or {}
    lines.append(f"* **Stage 2, {'DeGRPO (decoupled)' if g('rl.decoupled', True) else 'vanilla GRPO'}**: questions "
                 f"`{g('rl.data.source')}` ({g('rl.data.num_examples')} at most); {g('rl.max_steps')} steps of "
                 f"{g('rl.prompts_per_step')} prompts x {g('rl.num_generations')} samples (temperature "
                 f"{g('rl.temperature')}, up to {g('rl.max_completion_length')} tokens), learning rate "
                 f"{g('rl.learning_rate')}; control-token weight alpha={g('rl.alpha')}, KL beta={g('rl.beta')}, "
                 f"clip epsilon {g('rl.epsilon')}.")
    if reward:
        signed = lambda key: f"{reward[key]:+g}" if isinstance(reward.get(key), (int, float)) else "—"
        lines.append(f"* **Reward**: short right {signed('short_correct')}, think right {signed('think_correct')}, "
                     f"short wrong {signed('short_wrong')}, think wrong {signed('think_wrong')}, format error "
                     f"{signed('format_error')}.")
    return lines


def usage_snippet(model_ref: str, tokens: ControlTokens = ControlTokens(), kind: str = "merged",
                  tau: float = DEFAULT_TAU, question: str = "3+4") -> str:
    """Plain transformers (+ PEFT for an adapter): read P(<think>) at the first step, route with tau, generate."""
    if kind == "merged":
        head = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f"MODEL = {json.dumps(model_ref)}",
                "tok, model = AutoTokenizer.from_pretrained(MODEL), AutoModelForCausalLM.from_pretrained(MODEL)"]
    else:
        head = ["from peft import AutoPeftModelForCausalLM  # loads the base, resizes it to the tokenizer, adds the adapter",
                "from transformers import AutoTokenizer", "",
                f"MODEL = {json.dumps(model_ref)}",
                "tok, model = AutoTokenizer.from_pretrained(MODEL), AutoPeftModelForCausalLM.from_pretrained(MODEL)"]
    body = [
        f"prompt = tok.apply_chat_template([{{\"role\": \"user\", \"content\": {json.dumps(question)}}}], "
        "tokenize=False, add_generation_prompt=True)",
        "ids = tok(prompt, return_tensors=\"pt\", add_special_tokens=False).input_ids",
        f"short, think = tok.convert_tokens_to_ids([{json.dumps(tokens.short)}, {json.dumps(tokens.think)}])",
        "p_think = model(ids).logits[0, -1, [short, think]].softmax(-1)[1].item()  # P(<think>) at the first step",
        f"mode = {json.dumps(tokens.think)} if p_think >= {tau:g} else {json.dumps(tokens.short)}  "
        f"# route with a threshold tau; or force a mode: mode = {json.dumps(tokens.think)}",
        "ids = tok(prompt + mode, return_tensors=\"pt\", add_special_tokens=False).input_ids",
        "out = model.generate(input_ids=ids, max_new_tokens=256, do_sample=False)",
        "print(f\"P(think)={p_think:.2f}\", mode + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))",
    ]
    return "\n".join(head + body)


def peft_lines(model_ref: str, base: str, needs_resize: bool | None) -> str:
    """PeftModel.from_pretrained onto the base: the resize it needs first (when the base lacks the rows)."""
    lines = ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f"tok = AutoTokenizer.from_pretrained({json.dumps(model_ref)})",
             f"base = AutoModelForCausalLM.from_pretrained({json.dumps(base)})"]
    # Rows up to the highest id: the control tokens sit past every id and row of the base, so len(tok) can be fewer.
    if needs_resize is None:
        lines.append("rows = max(tok.get_vocab().values()) + 1")
        lines.append("if rows > base.get_input_embeddings().num_embeddings:  # rows for the control tokens")
        lines.append("    base.resize_token_embeddings(rows)")
    elif needs_resize:
        lines.append("base.resize_token_embeddings(max(tok.get_vocab().values()) + 1)  # rows for the control tokens; "
                     "their trained values are in the adapter")
    lines.append(f"model = PeftModel.from_pretrained(base, {json.dumps(model_ref)})")
    return "\n".join(lines)


@dataclass
class CardFacts:
    """What a model card says, gathered by :func:`export` (or by hand: :func:`render_card` is pure)."""

    kind: str                                   # "adapter" | "merged"
    model_ref: str                              # hub repo id, or the folder
    base: str                                   # base_model_name_or_path the adapter names
    base_hub_id: str | None = None              # metadata base_model (omitted when not on the hub)
    tokens: ControlTokens = field(default_factory=ControlTokens)
    stage: str | None = None                    # warmup | rl | None
    report: dict | None = None                  # normalised report
    report_sources: list = field(default_factory=list)
    recipe: dict | None = None
    needs_resize: bool | None = None
    dtype: str | None = None                    # merged: the dtype it was saved in
    untrained_rows: list = field(default_factory=list)
    version: str = ""


def card_metadata(facts: CardFacts) -> dict:
    meta: dict = {}
    if facts.base_hub_id:
        meta["base_model"] = facts.base_hub_id
    meta["library_name"] = "peft" if facts.kind == "adapter" else "transformers"
    meta["pipeline_tag"] = "text-generation"
    tags = ["thinkless", "thinkless-lite", "hybrid-reasoning", "adaptive-thinking", "control-tokens", "lora", "qlora"]
    if facts.stage == "rl":
        tags += ["grpo", "degrpo"]
    if facts.kind == "merged":
        tags.append("merged")
    meta["tags"] = tags
    datasets = recipe_datasets(facts.recipe, facts.stage)
    if datasets:
        meta["datasets"] = datasets
    return meta


def render_card(facts: CardFacts) -> str:
    """The model card (``README.md``): YAML metadata, what the control tokens mean, use, results, recipe. Pure."""
    t = facts.tokens
    meta = yaml.safe_dump(card_metadata(facts), sort_keys=False, allow_unicode=True).strip()
    named = _get(facts.recipe or {}, "model.name_or_path") or facts.base
    base_name = facts.base_hub_id or re.sub(r"\.gguf$", "", Path(named).name, flags=re.I) or facts.base
    stage = {"rl": "with warm-up distillation and DeGRPO", "warmup": "with the warm-up distillation only"}.get(
        facts.stage or "", "with thinkless_lite")
    what = ("a LoRA adapter (plus the trained control-token rows and the tokenizer that holds the control tokens)"
            if facts.kind == "adapter" else
            f"a standalone model: the adapter merged into the base's original weights ({facts.dtype or 'its own dtype'})")
    lines = ["---", meta, "---", "", f"# Thinkless {base_name}: answers directly or thinks first", "",
             f"This is {what}, trained {stage} to decide per question whether to reason, as in *Thinkless: LLM "
             "Learns When to Think* (Fang, Ma, Wang, 2025), QLoRA edition. Every answer starts with a control token:",
             "",
             f"* `{t.short}`: the answer follows directly;",
             f"* `{t.think}`: a chain of thought follows, closed by `{t.think_end}`, then the answer.", "",
             "The model picks the token itself as its first generated token. The chat template was neutralised: "
             f"a template that wrote `{t.think}` after the generation prompt no longer does, so the choice is the "
             "model's. You can read the choice as a probability, P(think) = p(think) / (p(think) + p(short)) at "
             "the first step; route with a threshold tau (think when P(think) >= tau: lower tau thinks more, is "
             f"more accurate and costs more tokens; 0 always thinks); or force a mode by appending `{t.think}` or "
             f"`{t.short}` to the prompt.", "",
             "## Use it with transformers", ""]
    if facts.kind == "merged":
        lines += ["Only `transformers` is needed (no thinkless_lite, no PEFT):", ""]
    else:
        lines += ["`transformers` and `peft` are needed (no thinkless_lite):", ""]
    lines += ["```python", usage_snippet(facts.model_ref, t, facts.kind), "```", ""]
    if facts.kind == "adapter":
        lines += [f"With `PeftModel` instead, the base (`{facts.base}`) needs rows for the control tokens first:", "",
                  "```python", peft_lines(facts.model_ref, facts.base, facts.needs_resize), "```", ""]
        if facts.untrained_rows:
            lines += [f"Rows {facts.untrained_rows} (the added pad token) are not in the adapter: each loader "
                      "initialises them its own way; they only pad batches.", ""]
        if not facts.base_hub_id:
            lines += [f"The base `{facts.base}` is a local folder, not a hub model: copy it along (for the "
                      "thinkless-lite mini-base it is `thinkless_lite/assets/mini-base` of the package), or share "
                      "the merged export (`thinkless-lite export --merge`) instead.", ""]
    else:
        lines += ["In vLLM the folder serves as is (`vllm serve <folder>`); the chat template ships with the "
                  f"tokenizer. To force a mode, append `{t.think}` or `{t.short}` to the templated prompt; to read "
                  "P(think), ask for the first token's logprobs (`max_tokens=1, logprobs=20`) and compare the two "
                  "control tokens.", ""]
    lines += ["## Results", ""]
    if facts.report_sources and facts.report:
        lines += ["From " + ", ".join(f"`{s}`" for s in facts.report_sources) + ":", ""]
    lines += results_table(facts.report) + ["", "## Training recipe", ""]
    lines += recipe_lines(facts.recipe, facts.stage) + [""]
    how = ("The adapter holds the LoRA weights and the full values of the trained control-token rows "
           "(PEFT `trainable_token_indices`), not the embedding tables." if facts.kind == "adapter" else
           "Merged with PEFT's `merge_and_unload` into the base reloaded from its original checkpoint, not into the "
           "4-bit (NF4) copy used for training: NF4 is a lossy training-time stand-in, and folding the small LoRA "
           "update into 4-bit weights would round most of it away; the result here is W + BA on the original "
           "weights. Its greedy answers are those of the 16-bit base + adapter.")
    lines += ["## How this was made", "", how, "",
              f"Exported with thinkless_lite {facts.version} (`thinkless-lite export`); `thinkless_export.json` "
              "records the control-token ids and the vocabulary size.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- finding the run around an adapter

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


# ---------------------------------------------------------------- checking what was asked

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
    from thinkless_lite.config import ConfigError, load_config, to_dict

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
    from transformers import AutoTokenizer

    from thinkless_lite.model import resolve_model_path

    folder = Path(adapter)
    if not folder.is_dir():
        raise ExportError(f"no such adapter folder: {folder}. Point --adapter at a trained stage's adapter, e.g. "
                          "runs/quickstart/rl/adapter (or runs/<name>/warmup/adapter)")
    if not (folder / "adapter_config.json").is_file():
        nested = [folder / s / "adapter" for s in ("rl", "warmup") if (folder / s / "adapter" / "adapter_config.json").is_file()]
        hint = f" Did you mean --adapter {nested[0]}?" if nested else \
            " thinkless_lite saves adapters in runs/<name>/{warmup,rl}/adapter."
        raise ExportError(f"{folder} is not an adapter folder: it has no adapter_config.json.{hint}")
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


def _check_out(out: Path, adapter: Path | None, overwrite: bool) -> None:
    if adapter is not None:
        here = adapter.resolve()
        target = out.resolve()
        if target == here or here in target.parents:
            raise ExportError(f"--out {out} is inside the adapter folder {adapter}; choose a folder outside it, "
                              f"e.g. --out {adapter.parent / 'export'}")
        if target in here.parents:
            raise ExportError(f"--out {out} contains the adapter {adapter}; choose a new folder, e.g. "
                              f"--out {adapter.parent / 'export'}")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ExportError(f"--out {out} exists and is not empty (and is not a previous export); choose a new or "
                              "empty folder")
        if not overwrite:
            raise ExportError(f"--out {out} already holds an export; choose a new folder, or pass --overwrite to replace it")


# ---------------------------------------------------------------- writing

def _base_vocab_size(base: str) -> int | None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as err:
        log.warning("could not read the base's config (%s): the card gives the conditional resize", err)
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "vocab_size", None)


def _trained_rows(peft_config: dict) -> list[int]:
    indices = peft_config.get("trainable_token_indices") or {}
    if isinstance(indices, list):
        return sorted(set(indices))
    return sorted({i for rows in indices.values() for i in rows})


def _prepared_tokenizer(info: AdapterInfo):
    """The adapter's tokenizer, its template neutralised again (idempotent) and every control token one token."""
    from thinkless_lite.tokens import neutralise_chat_template

    tokenizer = info.tokenizer
    if getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = neutralise_chat_template(tokenizer.chat_template, info.tokens)
    for token in info.tokens.all:
        if len(tokenizer(token, add_special_tokens=False)["input_ids"]) != 1:
            raise ExportError(f"control token {token!r} is not a single token in {info.adapter}'s tokenizer; "
                              "re-save the adapter with thinkless-lite")
    return tokenizer


def _write_adapter(info: AdapterInfo, tmp: Path) -> dict:
    tokenizer = _prepared_tokenizer(info)
    for name in ADAPTER_FILES:
        shutil.copy2(info.adapter / name, tmp / name)
    config = dict(info.peft_config, inference_mode=True, base_model_name_or_path=info.base)
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(tmp)
    from thinkless_lite.model import token_id_bound

    base_vocab = _base_vocab_size(info.base)
    size = token_id_bound(tokenizer)
    trained = set(_trained_rows(info.peft_config))
    untrained = [i for i in range(base_vocab, size) if i not in trained] if base_vocab is not None else []
    if untrained:
        log.warning("rows %s (%s) are new but not in the adapter: a loader initialises them its own way",
                    untrained, tokenizer.convert_ids_to_tokens(untrained))
    return {"vocab_size": size, "base_vocab_size": base_vocab,
            "needs_resize": None if base_vocab is None else size > base_vocab, "untrained_rows": untrained}


def _token_layers(peft_model) -> dict[int, tuple[str, list[int], Any]]:
    """Every trainable-tokens layer: id -> (name, rows, delta values) before merging."""
    layers = {}
    for name, module in peft_model.named_modules():
        deltas = getattr(module, "trainable_tokens_delta", None)
        if deltas is None or not hasattr(module, "token_indices"):
            continue
        for adapter_name, delta in deltas.items():
            key = id(delta)
            if key not in layers:
                layers[key] = (name, list(module.token_indices[adapter_name]), delta.detach().clone())
    return layers


def _check_merged_rows(model, layers: dict) -> None:
    """The control rows' trained values must be in the merged embedding and in the (tied or untied) head."""
    import torch

    embed = model.get_input_embeddings().weight
    head_module = model.get_output_embeddings()
    head = head_module.weight if head_module is not None else None
    for name, rows, delta in layers.values():
        if "lm_head" in name and head is not None and head is not embed:
            targets = [("output head", head)]
        else:
            targets = [("input embedding", embed)] + ([("tied output head", head)] if head is embed else [])
        for what, weight in targets:
            merged = weight.detach()[rows].float()
            if not torch.allclose(merged, delta.float().to(merged.device), atol=1e-6, rtol=0):
                raise ExportError(f"merging lost the trained control-token rows {rows} of the {what} ({name}); "
                                  "export without --merge (the adapter export is unaffected)")


def _write_merged(info: AdapterInfo, tmp: Path, dtype: str) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from thinkless_lite.gguf import COMPLETE_MARKER
    from thinkless_lite.model import generation_end_ids, grow_vocabulary, token_id_bound

    tokenizer = _prepared_tokenizer(info)
    wanted = "auto" if dtype == "auto" else getattr(torch, dtype)
    _say(f"loading the base {info.base} from its original checkpoint "
         f"({'its own dtype' if dtype == 'auto' else dtype}; not 4-bit, so the merge is W + BA on the real weights)")
    try:
        model = AutoModelForCausalLM.from_pretrained(info.base, dtype=wanted)
    except (OSError, ValueError) as err:
        raise ExportError(f"could not load the base model {info.base} ({err}); it must be a local folder or reachable on "
                          "the hub (export without --merge needs no base weights)") from err
    base_vocab = model.get_input_embeddings().weight.shape[0]
    added = grow_vocabulary(model, tokenizer)
    _say(f"base in {str(model.dtype).replace('torch.', '')}; vocabulary {base_vocab} -> {token_id_bound(tokenizer)} "
         f"({added} new rows); merging the adapter")
    peft_model = PeftModel.from_pretrained(model, str(info.adapter))
    layers = _token_layers(peft_model)
    merged = peft_model.merge_and_unload()
    _check_merged_rows(merged, layers)
    merged.eval()
    if dtype == "auto" and merged.dtype == torch.float32 and (Path(info.base) / COMPLETE_MARKER).exists():
        # A base converted from .gguf is stored in fp32 only because the conversion dequantised it; --merge
        # promises 16-bit, so the merge (done in fp32) is saved in bf16.
        _say("the base is a .gguf conversion (fp32 on disk): saving the merged model in bfloat16")
        merged = merged.to(torch.bfloat16)
    ends = [i for i in dict.fromkeys([tokenizer.eos_token_id, *generation_end_ids(info.base)]) if i is not None]
    merged.config.pad_token_id = tokenizer.pad_token_id
    merged.config.eos_token_id = ends[0] if len(ends) == 1 else ends
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.generation_config.eos_token_id = ends[0] if len(ends) == 1 else ends
    _say(f"writing the merged model to {tmp.name} (safetensors)")
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return {"vocab_size": token_id_bound(tokenizer), "base_vocab_size": base_vocab, "needs_resize": False,
            "untrained_rows": [], "dtype": str(merged.dtype).replace("torch.", ""), "eos_token_id": ends}


def _shown(path: Path, adapter: Path) -> str:
    """A report's path as the card shows it: relative to the run's parent folder (no local paths on the hub)."""
    _, run_dir = stage_of(adapter)
    if run_dir is not None:
        try:
            return path.resolve().relative_to(run_dir.resolve().parent).as_posix()
        except ValueError:
            pass
    return path.name


def _version() -> str:
    from thinkless_lite import __version__

    return __version__


def export(adapter: str | os.PathLike, out: str | os.PathLike, *, merge: bool = False, push_to_hub: str | None = None,
           private: bool = False, report: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
           dtype: str = "auto", token: str | None = None, overwrite: bool = False) -> dict:
    """Export ``adapter`` into ``out`` (adapter + card, or ``merge=True``: a merged model + card); optionally push.

    Bad input raises :class:`ExportError` before anything is written. The folder is built beside ``out`` and
    moved into place when complete, so a failure never leaves half an export. A failed push raises after the
    export is in place (the message says how to push it later). Returns what was written.
    """
    out = Path(out)
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if push_to_hub is not None:
        check_repo_id(push_to_hub)
    info = inspect_adapter(adapter, report=report, config=config)
    _check_out(out, info.adapter, overwrite)
    if push_to_hub is not None:
        _require_token(token, push_to_hub)
    kind = "merged" if merge else "adapter"
    _say(f"{kind} export of {info.adapter} (stage: {info.stage or 'unknown'}; base: {info.base}; report: "
         f"{', '.join(map(str, info.report_paths)) or 'none found'}; recipe: {info.recipe_path or 'none found'})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        facts = _write_merged(info, tmp, dtype) if merge else _write_adapter(info, tmp)
        model_ref = push_to_hub or str(out)
        card = render_card(CardFacts(
            kind=kind, model_ref=model_ref, base=info.base, base_hub_id=info.base_hub_id, tokens=info.tokens,
            stage=info.stage, report=info.report, report_sources=[_shown(p, info.adapter) for p in info.report_paths],
            recipe=info.recipe, needs_resize=facts["needs_resize"], dtype=facts.get("dtype"),
            untrained_rows=facts["untrained_rows"], version=_version()))
        (tmp / CARD).write_text(card, encoding="utf-8")
        if info.report:
            (tmp / REPORT_COPY).write_text(json.dumps(info.report, indent=2, default=str) + "\n", encoding="utf-8")
        if info.recipe:
            (tmp / RECIPE_COPY).write_text(yaml.safe_dump(info.recipe, sort_keys=False), encoding="utf-8")
        tokenizer = info.tokenizer
        marker = {
            "format": 1, "kind": kind, "model_ref": model_ref, "source_adapter": str(info.adapter),
            "stage": info.stage, "base_model_name_or_path": info.base, "base_hub_id": info.base_hub_id,
            "control_tokens": {"short": info.tokens.short, "think": info.tokens.think, "think_end": info.tokens.think_end},
            "control_token_ids": {name: tokenizer.convert_tokens_to_ids(t) for name, t in
                                  (("short", info.tokens.short), ("think", info.tokens.think),
                                   ("think_end", info.tokens.think_end))},
            "pad_token_id": tokenizer.pad_token_id,
            "report": [str(p) for p in info.report_paths], "recipe": str(info.recipe_path) if info.recipe_path else None,
            "thinkless_lite_version": _version(), **facts,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out) if any(out.iterdir()) else out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p.name for p in out.iterdir())
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    _say(f"wrote {out} ({size / 2**20:.1f} MiB): {', '.join(files)}")
    result = {"out": str(out), "kind": kind, "files": files, "bytes": size, "card": str(out / CARD),
              "base": info.base, "report": [str(p) for p in info.report_paths], "pushed": None}
    if push_to_hub is not None:
        result["pushed"] = push_folder(out, push_to_hub, private=private, token=token)
    return result


# ---------------------------------------------------------------- the hub

def _require_token(token: str | None, repo_id: str) -> str:
    from thinkless_lite.notebook import hub_token

    token = token or hub_token()
    if not token:
        raise ExportError(f"--push-to-hub {repo_id} needs a Hugging Face write token: set HF_TOKEN in the environment (in "
                          "Colab: the key icon, a secret named HF_TOKEN); nothing was written")
    return token


def _push_later(folder: Path, repo_id: str, private: bool) -> str:
    flag = " --private" if private else ""
    return (f"The exported folder {folder} is intact; push it later with `thinkless-lite export --out {folder} "
            f"--push-to-hub {repo_id}{flag}` or `hf upload {repo_id} {folder}{flag}`.")


def _why_push_failed(err: BaseException) -> str:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return "the hub is switched off here (HF_HUB_OFFLINE=1)"
    if isinstance(err, HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            return f"the hub refused the token (HTTP {status}): it needs write access to this repository"
        return f"the hub answered with an error: {str(err).splitlines()[0]}"
    try:
        import httpx

        if isinstance(err, httpx.TransportError):
            return f"could not reach the hub ({type(err).__name__}: {err})"
    except ImportError:
        pass
    if isinstance(err, (ConnectionError, OSError, TimeoutError)):
        return f"could not reach the hub ({type(err).__name__}: {err})"
    return f"{type(err).__name__}: {err}"


def push_folder(folder: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Create ``repo_id`` (if needed, ``private`` as asked) and upload ``folder`` with ``huggingface_hub``.

    The token comes from ``token``, else ``HF_TOKEN`` (or Colab's secret). Offline (``HF_HUB_OFFLINE=1``), an
    unreachable ``HF_ENDPOINT`` or a refused token raise :class:`ExportError`, leaving the folder as it was.
    """
    from huggingface_hub import HfApi

    from thinkless_lite.notebook import is_offline

    folder = Path(folder)
    check_repo_id(repo_id)
    token = _require_token(token, repo_id)
    if is_offline():
        raise ExportError(f"push to {repo_id} skipped: offline (HF_HUB_OFFLINE=1). {_push_later(folder, repo_id, private)}")
    endpoint = os.environ.get("HF_ENDPOINT") or None
    _say(f"pushing {folder} to {repo_id} ({'private' if private else 'public'}) on {endpoint or 'the hub'}")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        repo = api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token, repo_type="model",
                          commit_message="Upload Thinkless model (thinkless-lite export)")
    except Exception as err:  # every failure: the same "folder intact, push later" message
        raise ExportError(f"push to {repo_id} failed: {_why_push_failed(err)}. {_push_later(folder, repo_id, private)}") from err
    url = str(getattr(repo, "url", "") or f"{(endpoint or 'https://huggingface.co').rstrip('/')}/{repo_id}")
    _say(f"pushed: {url}")
    return url


def push_existing(out: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None) -> dict:
    """Push a finished export (a folder with ``thinkless_export.json``), pointing its card's snippet at ``repo_id``."""
    out = Path(out)
    marker_path = out / MARKER
    if not marker_path.is_file():
        raise ExportError(f"--out {out} is not a finished export (no {MARKER}); export an adapter first: "
                          f"thinkless-lite export --adapter <adapter folder> --out {out} --push-to-hub {repo_id}")
    check_repo_id(repo_id)
    _require_token(token, repo_id)
    marker = json.loads(marker_path.read_text(encoding="utf-8"))
    old = marker.get("model_ref")
    if old and old != repo_id:
        card = out / CARD
        if card.is_file():
            card.write_text(card.read_text(encoding="utf-8").replace(json.dumps(old), json.dumps(repo_id)),
                            encoding="utf-8")
        marker["model_ref"] = repo_id
        marker_path.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    url = push_folder(out, repo_id, private=private, token=token)
    return {"out": str(out), "kind": marker.get("kind"), "pushed": url}


# ---------------------------------------------------------------- command line

HELP = "share a trained adapter: a PEFT-loadable folder or (--merge) a standalone model, a model card, the hub"
EPILOG = """examples:
  # the small adapter + tokenizer + model card, loadable with plain PEFT onto the base
  thinkless-lite export --adapter runs/quickstart/rl/adapter --out runs/quickstart/export

  # a standalone model: the base reloaded in its own 16-bit (mini base: fp32) weights, the adapter merged;
  # AutoModelForCausalLM.from_pretrained(out) answers with <short> or <think> first, in transformers alone
  thinkless-lite export --adapter runs/quickstart/rl/adapter --out runs/quickstart/merged --merge

  # export and push (token from HF_TOKEN); a failed push keeps the folder and says how to retry
  thinkless-lite export --adapter runs/r1-1.5b-t4/rl/adapter --out runs/r1-1.5b-t4/export \\
      --push-to-hub your-name/thinkless-r1-1.5b --private

  # push a finished export later
  thinkless-lite export --out runs/r1-1.5b-t4/export --push-to-hub your-name/thinkless-r1-1.5b

The card's results come from the run's eval report (<run>/eval/report.json, <run>/eval/*/report.json or the
quickstart's <run>/report.json) and its recipe from <run>/<stage>/resolved.yaml; --report / --config override.
See docs/share.md."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", help="trained adapter folder, e.g. runs/quickstart/rl/adapter (omit it to push "
                                          "a finished export given by --out)")
    parser.add_argument("--out", required=True, help="new (or empty) folder to write the export to")
    parser.add_argument("--merge", action="store_true",
                        help="merge into the base reloaded in its own 16-bit dtype (not the 4-bit one) and save a "
                             "standalone model (safetensors, tokenizer, chat template, generation config)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="--merge: dtype to load, merge and save in (auto: the base checkpoint's own)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this hub repository "
                                                              "(token from HF_TOKEN)")
    parser.add_argument("--private", action="store_true", help="create the hub repository as private")
    parser.add_argument("--report", metavar="FILE", help="evaluation report.json for the card (default: found "
                                                         "in the adapter's run folder)")
    parser.add_argument("--config", metavar="FILE", help="the run's recipe for the card (default: the stage's "
                                                         "resolved.yaml)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinkless-lite export", description=HELP, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    """The CLI's work: export (and push), or push a finished export. Raises ExportError on bad input."""
    if args.private and not args.push_to_hub:
        log.warning("--private only matters with --push-to-hub; ignoring it")
    if args.adapter is None:
        if not args.push_to_hub:
            raise ExportError("--adapter is required (the trained adapter folder, e.g. runs/quickstart/rl/adapter); "
                              "without it, --out DIR --push-to-hub REPO pushes a finished export")
        if args.merge or args.report or args.config:
            raise ExportError("--merge, --report and --config need --adapter; to push a finished export give only "
                              "--out and --push-to-hub")
        return push_existing(args.out, args.push_to_hub, private=args.private)
    return export(args.adapter, args.out, merge=args.merge, push_to_hub=args.push_to_hub, private=args.private,
                  report=args.report, config=args.config, dtype=args.dtype, overwrite=args.overwrite)


def main(args: argparse.Namespace | list[str] | None = None) -> dict:
    """``thinkless-lite export``: prints ``error: ...`` and exits 1 on bad input or a failed push."""
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    try:
        return run(args)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    print(json.dumps(main(), indent=2, default=str))
