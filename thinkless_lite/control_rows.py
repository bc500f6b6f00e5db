"""The adapter's control rows: which embedding rows a LoRA adapter trains, that they stay trainable, and
that the adapter is saved small.

Its own module because these act on a PEFT model already built, whatever backend built it: which control
tokens own a row (``control_rows_to_train``), PEFT's ``trainable_token_indices`` for them (and an untied
head), ``save_pretrained`` writing LoRA weights and those rows alone, Unsloth's preparation undone for them,
and the guard every trainer calls.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from thinkless_lite.base import base_embedding_rows, base_tokenizer_source
from thinkless_lite.config import ModelConfig
from thinkless_lite.vocabulary import check_control_ids

log = logging.getLogger("thinkless_lite")


def control_rows_to_train(cfg: ModelConfig, tokenizer) -> list[int]:
    """Embedding rows the adapter owns: the control tokens the base lacked, or all of them.

    ``all`` matters for bases whose chat template writes ``<think>`` into the prompt (R1-Distill, our
    mini base): that token was never a prediction target, so its output row starts weak.
    """
    from transformers import AutoTokenizer

    base_vocab = AutoTokenizer.from_pretrained(base_tokenizer_source(cfg)).get_vocab()
    new = [t for t in cfg.control_tokens.all if t not in base_vocab]
    if not cfg.adapter_path:  # an adapter brings its own rows; a fresh start must have initialised them
        check_control_ids(tokenizer, cfg.control_tokens, base_rows=base_embedding_rows(cfg.name_or_path), new=new)
    wanted = cfg.control_tokens.all if cfg.train_control_rows == "all" else new
    return [tokenizer.convert_tokens_to_ids(t) for t in wanted]


def trainable_token_indices(model, rows: list[int]) -> dict[str, list[int]] | None:
    """PEFT's ``trainable_token_indices``: the control rows of the input embedding, and of the output head
    when it is a separate matrix (untied, as in R1-Distill-Qwen-1.5B): the rows that *emit* ``<short>``
    live there, and an adapter that trained only the input side could never learn to choose it."""
    if not rows:
        return None
    indices = {"embed_tokens": list(rows)}
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        name = next(n for n, m in model.named_modules() if m is head).split(".")[-1]
        indices[name] = list(rows)
    return indices


def save_small_adapters(model) -> None:
    """Make this model's ``save_pretrained`` (and so every Trainer checkpoint and ``push_to_hub``) write the
    adapter alone: LoRA weights and the trained control rows, nothing else.

    PEFT's default (``save_embedding_layers="auto"``) saves both whole embedding tables once the vocabulary
    was resized, which the control tokens always do: ~250 MB for SmolLM2-135M, ~1.8 GB for a 151k-vocabulary
    1.5B model, although the trained rows are already in the adapter as trainable-token values and every
    other row is the base's. TRL's KL reference (the ``ref`` adapter) is rebuilt from the starting adapter
    whenever a trainer starts, so it is not saved either. Loading needs the base resized to the tokenizer,
    which :func:`thinkless_lite.model.load_model` does.
    """
    save = model.save_pretrained

    def save_pretrained(save_directory, *args, **kwargs):
        kwargs.setdefault("save_embedding_layers", False)
        kwargs.setdefault("selected_adapters", [name for name in model.peft_config if name != "ref"])
        return save(save_directory, *args, **kwargs)

    save_pretrained.__doc__ = save.__doc__
    model.save_pretrained = save_pretrained


def expose_output_bias(model) -> None:
    """Let code that reads ``lm_head.weight``/``lm_head.bias`` directly see through PEFT's wrapper.

    With tied embeddings PEFT wraps the LM head in a TrainableTokensWrapper whose ``weight`` is the
    merged (differentiable) matrix but which has no ``bias``; TRL's fused log-prob head reads both.
    """
    head = model.get_output_embeddings()
    if head is not None and not hasattr(head, "bias"):
        original = getattr(head, "original_module", None)
        head.bias = getattr(original, "bias", None)


# ---------------------------------------------------------------- control rows under Unsloth, and the guard

TRAINABLE_ROWS_PARAM = "trainable_tokens_delta"  # PEFT's parameter holding an adapter's trained embedding rows
LORA_PARAM_MARKS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".lora_magnitude_vector.")


def _trainable_adapters(model) -> set[str]:
    """The PEFT adapters an optimizer will train: active and not loaded for inference (the KL reference
    ``ref`` is neither)."""
    configs = getattr(model, "peft_config", None) or {}
    if not configs:
        return set()
    active = getattr(model, "active_adapters", None)
    active = active() if callable(active) else active  # a method on transformers' own adapter mixin
    active = active or getattr(model, "active_adapter", None) or []
    active = [active] if isinstance(active, str) else list(active)
    return {name for name in active if name in configs and not getattr(configs[name], "inference_mode", False)}


def _adapter_of(name: str) -> str | None:
    """``...embed_tokens.token_adapter.trainable_tokens_delta.default`` -> ``default``; None for others."""
    head, mark, tail = name.rpartition(f".{TRAINABLE_ROWS_PARAM}.")
    return tail.split(".")[0] if mark and head else None


def unfreeze_control_rows(model) -> list[str]:
    """Make the control rows (PEFT ``trainable_tokens_delta``, input embedding and untied head) trainable
    again, in float32 like the LoRA weights beside them. Returns the tensors' names.

    Unsloth's ``get_peft_model`` and ``patch_peft_model`` (unsloth 2026.10.9) end with unsloth_zoo's
    ``prepare_model_for_training(full_finetuning=False)``, which freezes every parameter whose name is not
    a LoRA one (``.lora_A.``, ``.lora_B.``, ``.lora_embedding_*``, ``.lora_magnitude_vector``) or a PEFT
    bias, and which upcasts only what it leaves trainable. ``trainable_tokens_delta`` is none of these and
    Unsloth's ``_unfreeze_modules_to_save`` does not bring it back, so without this the warm-up would train
    LoRA alone and ``<short>`` would keep its initial row, silently. Called right after that preparation
    (the last place anything freezes: Unsloth's GRPO trainer keeps the trainable set it is handed). The
    float32 copy matters on bf16: Adam's steps of ~lr are far below a bf16 row's resolution (2^-8 of it).
    Only adapters that will train are touched (see ``_trainable_adapters``).
    """
    adapters = _trainable_adapters(model)
    names = []
    for name, param in model.named_parameters():
        if _adapter_of(name) not in adapters:
            continue
        if param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
        param.requires_grad_(True)
        names.append(name)
    if names:
        log.info("control rows trainable again after Unsloth's preparation: %s", ", ".join(names))
    return names


def scale_control_rows_learning_rate(optimizer, model, scale: float) -> int:
    """Give the control rows a learning rate of their own: ``scale`` x that of the group they were in.

    The rows are a handful of embedding vectors that decide the mode, beside LoRA matrices that shape every
    token; one learning rate for both is a choice, not a law. Each row tensor moves out of its optimizer group
    into a copy of that group (same weight decay and betas) whose ``lr`` is scaled; a scheduler created
    afterwards keeps the ratio. Returns the number of tensors moved."""
    rows = {id(p) for name, p in model.named_parameters() if _adapter_of(name) is not None and p.requires_grad}
    moved = 0
    for group in list(optimizer.param_groups):
        mine = [p for p in group["params"] if id(p) in rows]
        if not mine:
            continue
        group["params"] = [p for p in group["params"] if id(p) not in rows]
        settings = {k: v for k, v in group.items() if k != "params"}
        optimizer.add_param_group({**settings, "params": mine, "lr": group["lr"] * scale})
        moved += len(mine)
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    return moved


def frozen_adapter_tensors(model) -> list[str]:
    """Names of the tensors the recipe trains (LoRA weights and control rows of every adapter that will
    train) that are frozen, plus a line for each such adapter whose configured control rows have no
    tensor at all. Empty when all is well, or for a model without PEFT adapters."""
    adapters = _trainable_adapters(model)
    problems, rows_seen = [], set()
    for name, param in model.named_parameters():
        adapter = _adapter_of(name)
        if adapter is not None:
            rows_seen.add(adapter)
        elif any(mark in name for mark in LORA_PARAM_MARKS):
            adapter = next((a for a in adapters if f"{name}.".count(f".{a}.")), None)
        if adapter in adapters and not param.requires_grad:
            problems.append(name)
    configs = getattr(model, "peft_config", None) or {}
    for adapter in sorted(adapters):
        if getattr(configs[adapter], "trainable_token_indices", None) and adapter not in rows_seen:
            problems.append(f"{TRAINABLE_ROWS_PARAM}.{adapter} (configured, but the model has no such tensor)")
    return problems


def assert_control_rows_trainable(model) -> None:
    """Fail loudly, naming the tensors, when a row or LoRA weight the recipe trains is frozen, on any backend.

    Every trainer calls this first: a frozen control row (``<short>``, ``<think>``) does not crash anything,
    it just never learns, which no loss curve would show.
    """
    frozen = frozen_adapter_tensors(model)
    if frozen:
        shown = ", ".join(frozen[:8]) + (f" and {len(frozen) - 8} more" if len(frozen) > 8 else "")
        raise RuntimeError(
            f"{len(frozen)} tensor(s) the recipe trains are frozen (requires_grad=False): {shown}. Something after "
            "PEFT froze them (Unsloth's prepare_model_for_training does, for control rows: load through "
            "thinkless_lite.model.load_model, which calls unfreeze_control_rows, or call it yourself).")


def decision_rows(model, think_id: int, short_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The trained output rows of ``<think>`` and ``<short>``: the tensors whose difference, dotted with the
    decision point's state, is the log-odds of the mode choice (``rl.mode_threshold_lr`` moves them).

    Under an adapter they are PEFT's trainable-token rows of the output head (shared with the input embedding
    when the head is tied), so a shift is saved with the adapter and merged by the export; with full fine-tuning,
    the head's own rows. Anything else raises, naming the fix: a shift the adapter does not save would be lost.
    """
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    head = model.get_output_embeddings()
    layers = [m for m in head.modules() if isinstance(m, TrainableTokensLayer)] if head is not None else []
    for layer in layers:
        adapter = next((a for a in layer.token_indices if a in _trainable_adapters(model)), None)
        indices = layer.token_indices.get(adapter, [])
        if adapter is not None and think_id in indices and short_id in indices:
            delta = layer.trainable_tokens_delta[adapter]
            return delta[indices.index(think_id)], delta[indices.index(short_id)]
    weight = getattr(head, "weight", None)
    if not layers and weight is not None and weight.requires_grad:
        return weight[think_id], weight[short_id]
    raise ValueError("rl.mode_threshold_lr moves the output rows of <think> and <short>, but this model does not "
                     "train both (set model.train_control_rows to new or all, or rl.mode_threshold_lr=0)")


@contextlib.contextmanager
def control_rows_folded(model):
    """Inference with the adapter's trained control rows written into the embedding (and head) for the duration.

    PEFT's trainable-token wrapper otherwise rebuilds the whole table (``index_copy``) on every forward,
    i.e. for every generated token: 0.32 s a forward on a 262k-token vocabulary. Folded, a forward reads
    the plain table; the rows go back when the block ends (PEFT's ``unmerge``, which writes the original rows
    back in place). A model in training mode is left as it is.

    The rows are written into the table in place (:func:`_fold_rows`), not by PEFT's ``merge``, which makes a
    new copy of the whole table each time: on SmolLM2 (49,155 x 576) that is 113 MB copied per table and fold,
    and RL folds three times a step (generation, the decision point, the threshold's hold).
    """
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    layers = [m for m in model.modules() if isinstance(m, TrainableTokensLayer) and not m.merged]
    if model.training or not layers:
        yield model
        return
    with torch.no_grad():
        for layer in layers:
            _fold_rows(layer)
    try:
        yield model
    finally:
        with torch.no_grad():
            for layer in layers:
                if layer.merged:
                    layer.unmerge()


def _fold_rows(layer) -> None:
    """PEFT's ``TrainableTokensLayer.merge`` for the active adapters, with the rows written into the base table
    in place: the same table afterwards, without a copy of it. ``unmerge`` (PEFT's, in place too) restores it."""
    from peft.tuners.tuners_utils import check_adapters_to_merge

    weight = layer.base_layer.weight
    for name in check_adapters_to_merge(layer, None):
        index = torch.tensor(layer.token_indices[name], device=weight.device)
        weight.data.index_copy_(0, index, layer.trainable_tokens_delta[name].to(weight))
        layer.merged_adapters.append(name)
