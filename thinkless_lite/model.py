"""Model backends and loading: one place decides how a base model becomes a trainable Thinkless model.

Backends:
  unsloth  Unsloth FastLanguageModel, 4-bit, its fused kernels (CUDA only)
  hf       transformers + bitsandbytes NF4 + PEFT LoRA (QLoRA; also runs on CPU)
  full     no quantisation, LoRA on a full-precision base (tiny models, debugging)
  auto     unsloth when CUDA and a working unsloth are present, else hf; the choice is logged

Control tokens are added when the tokenizer lacks them and reused when present; only the new
embedding rows train (PEFT ``trainable_token_indices``), so an adapter holds LoRA weights and a few rows
(0.6 MB on the mini base, 23 MB on SmolLM2-135M at r=16: ``benchmarks/adapter_size.py``).

This module reads a base by name and puts the pieces together; the tokenizer work is
:mod:`thinkless_lite.vocabulary`, the adapter's control rows :mod:`thinkless_lite.control_rows`.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from thinkless_lite.compat import bf16_native, four_bit_layout, plain_4bit_layout
from thinkless_lite.config import ModelConfig
from thinkless_lite.control_rows import (expose_output_bias, save_small_adapters, trainable_token_indices,
                                         unfreeze_control_rows)
from thinkless_lite.vocabulary import (check_control_ids, check_tokenizer, control_token_ids, end_token_ids,
                                       grow_vocabulary, prepare_tokenizer)

log = logging.getLogger("thinkless_lite")

BACKENDS = ("auto", "unsloth", "hf", "full")
# The embedded default model, shipped in the package (thinkless_lite/mini_base.py builds it).
MINI_BASE_NAME = "thinkless-lite/mini-base"
MINI_BASE_DIR = Path(__file__).resolve().parent / "assets" / "mini-base"


def resolve_model_path(name_or_path: str) -> str:
    """The folder (or hub id) to load: the embedded mini base by name, a local ``.gguf`` via its cached
    conversion (:mod:`thinkless_lite.gguf`), anything else as given."""
    if name_or_path == MINI_BASE_NAME:
        return str(MINI_BASE_DIR)
    from thinkless_lite.gguf import gguf_to_hf, is_gguf

    return str(gguf_to_hf(name_or_path)) if is_gguf(name_or_path) else name_or_path


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


def _tokenizer_source(cfg: ModelConfig) -> str:
    """An adapter folder saved by us carries the tokenizer that matches its embedding rows; else
    ``model.tokenizer`` when set (a tokenizer from elsewhere than the weights), else the base's."""
    if cfg.adapter_path and (Path(cfg.adapter_path) / "tokenizer_config.json").exists():
        return cfg.adapter_path
    return _base_tokenizer_source(cfg)


def _base_tokenizer_source(cfg: ModelConfig) -> str:
    """Where the base's own tokenizer (before control tokens) comes from."""
    return resolve_model_path(cfg.tokenizer) if cfg.tokenizer else resolve_model_path(cfg.name_or_path)


def load_base(name_or_path: str, backend: str, dtype: torch.dtype, *, load_in_4bit: bool = True,
              double_quant: bool = True):
    """A base's weights through transformers: NF4 via bitsandbytes on ``hf`` with ``load_in_4bit``, else as
    stored in ``dtype``, on the GPU when there is one. ``double_quant`` also quantises the 4-bit scales: the
    student's setting; the warm-up teachers (:mod:`thinkless_lite.teachers`) have always run without it."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": dtype}
    if backend == "hf" and load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name_or_path), **kwargs)
    if backend == "full" and torch.cuda.is_available():
        model = model.cuda()
    return model


def _load_unsloth(cfg: ModelConfig, dtype: torch.dtype):
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(
        model_name=resolve_model_path(cfg.name_or_path), max_seq_length=cfg.max_seq_length,
        load_in_4bit=cfg.load_in_4bit, dtype=dtype)
    return model


def control_rows_to_train(cfg: ModelConfig, tokenizer) -> list[int]:
    """Embedding rows the adapter owns: the control tokens the base lacked, or all of them.

    ``all`` matters for bases whose chat template writes ``<think>`` into the prompt (R1-Distill, our
    mini base): that token was never a prediction target, so its output row starts weak.
    """
    from transformers import AutoTokenizer

    base_vocab = AutoTokenizer.from_pretrained(_base_tokenizer_source(cfg)).get_vocab()
    new = [t for t in cfg.control_tokens.all if t not in base_vocab]
    if not cfg.adapter_path:  # an adapter brings its own rows; a fresh start must have initialised them
        check_control_ids(tokenizer, cfg.control_tokens, base_rows=base_embedding_rows(cfg.name_or_path), new=new)
    wanted = cfg.control_tokens.all if cfg.train_control_rows == "all" else new
    return [tokenizer.convert_tokens_to_ids(t) for t in wanted]


def _lora_config(cfg: ModelConfig, token_indices: dict | None):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM", bias="none",
        trainable_token_indices=token_indices)


def base_generation_config(name_or_path: str):
    """A base's generation config read from disk (for its end ids); None when it has no such file."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(resolve_model_path(name_or_path))
    except (OSError, ValueError):
        return None


def base_embedding_rows(name_or_path: str) -> int:
    """Rows of the base's input embedding, from its config (no weights loaded); 0 when unknown."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    except (OSError, ValueError):
        return 0
    config = getattr(config, "get_text_config", lambda: config)()
    return int(getattr(config, "vocab_size", 0) or 0)


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer a run uses: the adapter's when it has one, prepared (template, pad, control tokens)."""
    from transformers import AutoTokenizer

    source = _tokenizer_source(cfg)
    tokenizer = AutoTokenizer.from_pretrained(source)
    new_ids = prepare_tokenizer(tokenizer, cfg, end_token_ids(tokenizer, base_generation_config(cfg.name_or_path)),
                                base_embedding_rows(cfg.name_or_path))
    check_tokenizer(tokenizer, source)
    return tokenizer, new_ids


def _prepare_for_kbit_or_checkpointing(model, cfg: ModelConfig, backend: str):
    """PEFT's k-bit preparation (casts, input grads, checkpointing) for a 4-bit base, else plain checkpointing."""
    from peft import prepare_model_for_kbit_training

    if backend == "hf" and cfg.load_in_4bit:
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def load_model(cfg: ModelConfig, *, trainable: bool = True, seed: int = 0) -> LoadedModel:
    """Base (4-bit unless told otherwise) + tokenizer + control tokens + LoRA (new, or from adapter_path).

    Whichever way the adapter comes (new or from a folder), a trainable model gets the same treatment:
    k-bit preparation and gradient checkpointing on ``hf``, Unsloth's LoRA patching on ``unsloth``.
    """
    choice = select_backend(cfg.backend)
    log.info("backend: %s (%s)", choice.name, choice.reason)
    dtype = compute_dtype(cfg.dtype)
    tokenizer, new_ids = load_tokenizer(cfg)
    torch.manual_seed(seed)
    if choice.name == "unsloth":
        model = _load_unsloth(cfg, dtype)
    else:
        model = load_base(cfg.name_or_path, choice.name, dtype, load_in_4bit=cfg.load_in_4bit)
    grow_vocabulary(model, tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    token_indices = trainable_token_indices(model, control_rows_to_train(cfg, tokenizer))
    unsloth_checkpointing = "unsloth" if cfg.gradient_checkpointing else False
    if choice.name == "unsloth":
        from unsloth import FastLanguageModel

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
    else:
        from peft import PeftModel, get_peft_model

        if trainable:
            model = _prepare_for_kbit_or_checkpointing(model, cfg, choice.name)
        if cfg.adapter_path:
            model = PeftModel.from_pretrained(model, cfg.adapter_path, is_trainable=trainable)
        else:
            model = get_peft_model(model, _lora_config(cfg, token_indices))
    expose_output_bias(model)
    save_small_adapters(model)
    plain_4bit_layout(model)  # one layout for training and inference, on every CPU (compat explains)
    layout = four_bit_layout(model)
    if layout:
        log.info("4-bit layout: %s", layout)
    if not trainable:
        model.eval()
    return LoadedModel(model, tokenizer, choice, new_ids, control_token_ids(tokenizer, cfg.control_tokens))


def save_adapter(loaded: LoadedModel, folder: str | Path) -> Path:
    """Adapter and tokenizer together: the tokenizer's new control tokens match the adapter's rows."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder
