"""Write the exported weights: the adapter as PEFT loads it, or (``--merge``) a standalone model.

Why the merge reloads the base from its own checkpoint rather than the 4-bit copy the adapter trained on:
NF4 is a lossy, training-time stand-in for the base's weights. Folding ``B @ A`` into 4-bit weights would
quantise the update again (it is small next to an NF4 step, so most of it would round away), and
dequantising first would ship a degraded copy of the base. Merged into the original 16-bit weights, the
result is ``W + B @ A`` exactly, which is what a QLoRA adapter is meant to be applied to.

transformers and PEFT are imported where they are used: importing :mod:`thinkless_lite.export` must not import
them, since Unsloth has to patch them first when a notebook goes on to train.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from thinkless_lite.export.folder import ADAPTER_FILES, ExportError, ExportRunError, say
from thinkless_lite.export.inspect import AdapterInfo
from thinkless_lite.gguf import COMPLETE_MARKER
from thinkless_lite.base import base_generation_config
from thinkless_lite.tokens import neutralise_chat_template
from thinkless_lite.vocabulary import end_token_ids, grow_vocabulary, token_id_bound

log = logging.getLogger("thinkless_lite")

DTYPES = ("auto", "float32", "bfloat16", "float16")


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
    tokenizer = info.tokenizer
    if getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = neutralise_chat_template(tokenizer.chat_template, info.tokens)
    for token in info.tokens.all:
        if len(tokenizer(token, add_special_tokens=False)["input_ids"]) != 1:
            raise ExportError(f"control token {token!r} is not a single token in {info.adapter}'s tokenizer; "
                              "re-save the adapter with thinkless-lite")
    return tokenizer


def write_adapter(info: AdapterInfo, tmp: Path) -> dict:
    """The adapter, its config pointing at the base, and the tokenizer; returns the marker's vocabulary facts."""
    tokenizer = _prepared_tokenizer(info)
    for name in ADAPTER_FILES:
        shutil.copy2(info.adapter / name, tmp / name)
    config = dict(info.peft_config, inference_mode=True, base_model_name_or_path=info.base)
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(tmp)
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
                raise ExportRunError(f"merging lost the trained control-token rows {rows} of the {what} ({name}); "
                                  "export without --merge (the adapter export is unaffected)")


def write_merged(info: AdapterInfo, tmp: Path, dtype: str) -> dict:
    """The base in ``dtype`` with the adapter merged, saved with the tokenizer and end ids; returns the facts."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer = _prepared_tokenizer(info)
    wanted = "auto" if dtype == "auto" else getattr(torch, dtype)
    say(f"loading the base {info.base} from its original checkpoint "
         f"({'its own dtype' if dtype == 'auto' else dtype}; not 4-bit, so the merge is W + BA on the real weights)")
    try:
        model = AutoModelForCausalLM.from_pretrained(info.base, dtype=wanted)
    except (OSError, ValueError) as err:
        raise ExportRunError(f"could not load the base model {info.base} ({err}); it must be a local folder or reachable on "
                          "the hub (export without --merge needs no base weights)") from err
    base_vocab = model.get_input_embeddings().weight.shape[0]
    added = grow_vocabulary(model, tokenizer)
    say(f"base in {str(model.dtype).replace('torch.', '')}; vocabulary {base_vocab} -> {token_id_bound(tokenizer)} "
         f"({added} new rows); merging the adapter")
    peft_model = PeftModel.from_pretrained(model, str(info.adapter))
    layers = _token_layers(peft_model)
    merged = peft_model.merge_and_unload()
    _check_merged_rows(merged, layers)
    merged.eval()
    if dtype == "auto" and merged.dtype == torch.float32 and (Path(info.base) / COMPLETE_MARKER).exists():
        # A base converted from .gguf is stored in fp32 only because the conversion dequantised it; --merge
        # promises 16-bit, so the merge (done in fp32) is saved in bf16.
        say("the base is a .gguf conversion (fp32 on disk): saving the merged model in bfloat16")
        merged = merged.to(torch.bfloat16)
    ends = end_token_ids(tokenizer, base_generation_config(info.base))
    merged.config.pad_token_id = tokenizer.pad_token_id
    merged.config.eos_token_id = ends[0] if len(ends) == 1 else ends
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.generation_config.eos_token_id = ends[0] if len(ends) == 1 else ends
    say(f"writing the merged model to {tmp.name} (safetensors)")
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return {"vocab_size": token_id_bound(tokenizer), "base_vocab_size": base_vocab, "needs_resize": False,
            "untrained_rows": [], "dtype": str(merged.dtype).replace("torch.", ""), "eos_token_id": ends}
