"""Model backends and loading: one place decides how a base model becomes a trainable Thinkless model.

Backends:
  unsloth  Unsloth FastLanguageModel, 4-bit, its fused kernels (CUDA only)
  hf       transformers + bitsandbytes NF4 + PEFT LoRA (QLoRA; also runs on CPU)
  full     no quantisation, LoRA on a full-precision base (tiny models, debugging)
  auto     unsloth when CUDA and a working unsloth are present, else hf; the choice is logged

Control tokens are added when the tokenizer lacks them and reused when present; only the new
embedding rows train (PEFT ``trainable_token_indices``), so an adapter holds LoRA weights and a few rows
(0.6 MB on the mini base, 23 MB on SmolLM2-135M at r=16: ``benchmarks/adapter_size.py``).

This module chooses the backend and puts the pieces together in :func:`load_model`, calling down: a base read
by name is :mod:`thinkless_lite.base`, the tokenizer work :mod:`thinkless_lite.vocabulary`, the adapter's
control rows :mod:`thinkless_lite.control_rows`.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from thinkless_lite.base import load_base, resolve_model_path
from thinkless_lite.compat import bf16_native, four_bit_layout, plain_4bit_layout
from thinkless_lite.config import ModelConfig
from thinkless_lite.control_rows import (control_rows_to_train, expose_output_bias, save_small_adapters,
                                         trainable_token_indices, unfreeze_control_rows)
from thinkless_lite.vocabulary import control_token_ids, grow_vocabulary, load_tokenizer

log = logging.getLogger("thinkless_lite")

BACKENDS = ("auto", "unsloth", "hf", "full")
@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str


def unsloth_status() -> tuple[bool, str]:
    """Whether Unsloth can be used here, and why not. Never raises: a broken install is a fallback."""
    if not torch.cuda.is_available():
        return False, "no CUDA GPU (Unsloth needs one)"
    if importlib.util.find_spec("unsloth") is None:
        return False, "unsloth is not installed (pip install 'thinkless-lite[unsloth]')"
    try:
        import unsloth  # noqa: F401  (import patches transformers; must come first)
    except Exception as err:  # noqa: BLE001 - any import-time failure means "fall back"
        return False, f"unsloth failed to import: {type(err).__name__}: {err}"
    return True, "CUDA GPU and a working unsloth"


def select_backend(requested: str, *, status: tuple[bool, str] | None = None) -> BackendChoice:
    """Resolve ``auto`` and check an explicit ``unsloth``; pure apart from the optional status probe."""
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {requested!r}")
    if requested in ("hf", "full"):
        return BackendChoice(requested, "requested explicitly")
    ok, why = status if status is not None else unsloth_status()
    if requested == "unsloth":
        if not ok:
            raise RuntimeError(f"backend 'unsloth' requested but {why}; use model.backend=auto or hf")
        return BackendChoice("unsloth", why)
    return BackendChoice("unsloth", why) if ok else BackendChoice("hf", f"fell back to hf: {why}")


def precision_flags(dtype: str) -> dict:
    """The Trainer's device and mixed-precision flags for a compute dtype: CPU without autocast, bf16 or fp16 on a GPU."""
    on_gpu = torch.cuda.is_available()
    chosen = compute_dtype(dtype)
    return {"use_cpu": not on_gpu, "bf16": on_gpu and chosen == torch.bfloat16, "fp16": on_gpu and chosen == torch.float16}


def compute_dtype(name: str) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if bf16_native() else torch.float16
    return torch.float32


# ---------------------------------------------------------------- model

@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    backend: BackendChoice
    new_token_ids: list[int] = field(default_factory=list)
    control_ids: dict[str, int] = field(default_factory=dict)


def load_model(cfg: ModelConfig, *, trainable: bool = True, seed: int = 0) -> LoadedModel:
    """Base (4-bit unless told otherwise) + tokenizer + control tokens + LoRA (new, or from adapter_path).

    One step per line, each done by the module that owns it: the tokenizer (:mod:`thinkless_lite.vocabulary`),
    the weights (:mod:`thinkless_lite.base` or Unsloth), the grown vocabulary, the adapter's control rows
    (:mod:`thinkless_lite.control_rows`), the LoRA adapter. Whichever way the adapter comes (new or from a
    folder), a trainable model gets the same treatment: k-bit preparation and gradient checkpointing on ``hf``,
    Unsloth's LoRA patching on ``unsloth``.
    """
    choice = select_backend(cfg.backend)
    log.info("backend: %s (%s)", choice.name, choice.reason)
    dtype = compute_dtype(cfg.dtype)
    tokenizer, new_ids = load_tokenizer(cfg)
    torch.manual_seed(seed)
    model = _load_weights(cfg, choice.name, dtype)
    grow_vocabulary(model, tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    token_indices = trainable_token_indices(model, control_rows_to_train(cfg, tokenizer))
    if choice.name == "unsloth":
        model = _unsloth_lora(model, cfg, token_indices, trainable=trainable, seed=seed)
    else:
        model = _peft_lora(model, cfg, choice.name, token_indices, trainable=trainable)
    expose_output_bias(model)
    save_small_adapters(model)
    plain_4bit_layout(model)  # one layout for training and inference, on every CPU (compat explains)
    layout = four_bit_layout(model)
    if layout:
        log.info("4-bit layout: %s", layout)
    if not trainable:
        model.eval()
    return LoadedModel(model, tokenizer, choice, new_ids, control_token_ids(tokenizer, cfg.control_tokens))


def _load_weights(cfg: ModelConfig, backend: str, dtype: torch.dtype):
    """The base's weights: Unsloth's own loader on ``unsloth``, transformers (:func:`load_base`) otherwise."""
    if backend != "unsloth":
        return load_base(cfg.name_or_path, backend, dtype, load_in_4bit=cfg.load_in_4bit)
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(
        model_name=resolve_model_path(cfg.name_or_path), max_seq_length=cfg.max_seq_length,
        load_in_4bit=cfg.load_in_4bit, dtype=dtype)
    return model


def _unsloth_lora(model, cfg: ModelConfig, token_indices: dict | None, *, trainable: bool, seed: int):
    """LoRA through Unsloth: its own PEFT model for a new adapter, a PEFT-loaded one patched for an adapter folder."""
    from unsloth import FastLanguageModel

    unsloth_checkpointing = "unsloth" if cfg.gradient_checkpointing else False
    if cfg.adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.adapter_path, is_trainable=trainable)
        # FastLanguageModel.from_pretrained(adapter) would do this itself; a PeftModel made by hand must ask.
        model = FastLanguageModel.patch_peft_model(model, use_gradient_checkpointing=unsloth_checkpointing)
    else:
        model = FastLanguageModel.get_peft_model(
            model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules), random_state=seed,
            use_gradient_checkpointing=unsloth_checkpointing,
            **({"trainable_token_indices": token_indices} if token_indices else {}))
    if trainable:  # Unsloth's preparation froze the control rows (unfreeze_control_rows says why)
        unfreeze_control_rows(model)
    return model


def _peft_lora(model, cfg: ModelConfig, backend: str, token_indices: dict | None, *, trainable: bool):
    """LoRA through PEFT (``hf``, ``full``): k-bit preparation or checkpointing first when it will train."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if trainable and backend == "hf" and cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif trainable and cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.adapter_path:
        return PeftModel.from_pretrained(model, cfg.adapter_path, is_trainable=trainable)
    return get_peft_model(model, LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM", bias="none",
        trainable_token_indices=token_indices))


def save_adapter(loaded: LoadedModel, folder: str | Path) -> Path:
    """Adapter and tokenizer together: the tokenizer's new control tokens match the adapter's rows."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder
