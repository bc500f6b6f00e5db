"""The model card (``README.md``) of an export: hub metadata, what the control tokens mean, how to load the
model without thinkless_lite, the run's results and its recipe. Pure: it reads nothing and writes nothing.

Built as a :class:`huggingface_hub.ModelCard` so the hub reads its metadata as it reads any model's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from thinkless_lite.export.hub import is_hub_id
from thinkless_lite.report import markdown_tables
from thinkless_lite.tokens import ControlTokens

DEFAULT_TAU = 0.5


def results_table(report: dict | None) -> list[str]:
    """The card's results: the report's tables (:func:`thinkless_lite.report.markdown_tables`), or a plain
    sentence when there is no report, never a number."""
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


def card_data(facts: CardFacts) -> ModelCardData:
    """The card's hub metadata: base model, library, tags, the hub datasets it trained on."""
    tags = ["thinkless", "thinkless-lite", "hybrid-reasoning", "adaptive-thinking", "control-tokens", "lora", "qlora"]
    if facts.stage == "rl":
        tags += ["grpo", "degrpo"]
    if facts.kind == "merged":
        tags.append("merged")
    return ModelCardData(base_model=facts.base_hub_id or None,
                         library_name="peft" if facts.kind == "adapter" else "transformers",
                         pipeline_tag="text-generation", tags=tags,
                         datasets=recipe_datasets(facts.recipe, facts.stage) or None)


# The metadata keys in the order the card has always written them (ModelCardData's own order differs).
METADATA_ORDER = ["base_model", "library_name", "pipeline_tag", "tags", "datasets"]


def render_card(facts: CardFacts) -> str:
    """The model card (``README.md``): YAML metadata, what the control tokens mean, use, results, recipe. Pure."""
    t = facts.tokens
    named = _get(facts.recipe or {}, "model.name_or_path") or facts.base
    base_name = facts.base_hub_id or re.sub(r"\.gguf$", "", Path(named).name, flags=re.I) or facts.base
    stage = {"rl": "with warm-up distillation and DeGRPO", "warmup": "with the warm-up distillation only"}.get(
        facts.stage or "", "with thinkless_lite")
    what = ("a LoRA adapter (plus the trained control-token rows and the tokenizer that holds the control tokens)"
            if facts.kind == "adapter" else
            f"a standalone model: the adapter merged into the base's original weights ({facts.dtype or 'its own dtype'})")
    lines = ["", f"# Thinkless {base_name}: answers directly or thinks first", "",
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
    metadata = card_data(facts).to_yaml(original_order=METADATA_ORDER)
    return str(ModelCard("\n".join(["---", metadata, "---", *lines])))
