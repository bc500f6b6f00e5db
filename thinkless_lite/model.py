"""Model backends and loading: one place decides how a base model becomes a trainable Thinkless model.

Backends:
  unsloth  Unsloth FastLanguageModel, 4-bit, its fused kernels (CUDA only)
  hf       transformers + bitsandbytes NF4 + PEFT LoRA (QLoRA; also runs on CPU)
  full     no quantisation, LoRA on a full-precision base (tiny models, debugging)
  auto     unsloth when CUDA and a working unsloth are present, else hf; the choice is logged

Control tokens are added when the tokenizer lacks them and reused when present; only the new
embedding rows train (PEFT ``trainable_token_indices``), so an adapter stays a few MB.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from thinkless_lite.config import ModelConfig
from thinkless_lite.mini_base import resolve_model_path
from thinkless_lite.tokens import FALLBACK_CHAT_TEMPLATE, ControlTokens, neutralise_chat_template

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


def compute_dtype(name: str) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if bf16_native() else torch.float16
    return torch.float32


def bf16_native() -> bool:
    """bf16 in hardware (Ampere+). A T4 reports bf16 support through emulation, which is slow."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


# ---------------------------------------------------------------- tokenizer

def prepare_tokenizer(tokenizer, cfg: ModelConfig) -> list[int]:
    """Pad token, chat template (override, fallback, neutralised), control tokens. Returns new token ids.

    Control tokens are added as *non-special* tokens: TRL decodes completions with
    ``skip_special_tokens=True`` and the reward must still see which mode was chosen.
    """
    tokens = cfg.control_tokens
    if cfg.chat_template:
        tokenizer.chat_template = cfg.chat_template
    if not getattr(tokenizer, "chat_template", None):
        warnings.warn("tokenizer has no chat template; using a ChatML fallback (set model.chat_template to override)",
                      stacklevel=2)
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    tokenizer.chat_template = neutralise_chat_template(tokenizer.chat_template, tokens)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return ensure_control_tokens(tokenizer, tokens)


def ensure_control_tokens(tokenizer, tokens: ControlTokens) -> list[int]:
    """Add the control strings the tokenizer lacks as single tokens; return the ids that are new."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens.all if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=False)
    for t in tokens.all:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"control token {t!r} does not encode to a single token (got {ids}); "
                             "choose strings the tokenizer can hold as one token")
    return [tokenizer.convert_tokens_to_ids(t) for t in missing]


def control_token_ids(tokenizer, tokens: ControlTokens) -> dict[str, int]:
    return {"short": tokenizer.convert_tokens_to_ids(tokens.short), "think": tokenizer.convert_tokens_to_ids(tokens.think)}


# ---------------------------------------------------------------- model

@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    backend: BackendChoice
    new_token_ids: list[int] = field(default_factory=list)
    control_ids: dict[str, int] = field(default_factory=dict)


def _tokenizer_source(cfg: ModelConfig) -> str:
    """An adapter folder saved by us carries the tokenizer that matches its embedding rows."""
    if cfg.adapter_path and (Path(cfg.adapter_path) / "tokenizer_config.json").exists():
        return cfg.adapter_path
    return resolve_model_path(cfg.name_or_path)


def _load_hf(cfg: ModelConfig, backend: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": dtype}
    if backend == "hf" and cfg.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.name_or_path), **kwargs)
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
    if cfg.train_control_rows == "all":
        wanted = cfg.control_tokens.all
    else:
        from transformers import AutoTokenizer

        base_vocab = AutoTokenizer.from_pretrained(resolve_model_path(cfg.name_or_path)).get_vocab()
        wanted = [t for t in cfg.control_tokens.all if t not in base_vocab]
    return [tokenizer.convert_tokens_to_ids(t) for t in wanted]


def _lora_config(cfg: ModelConfig, new_token_ids: list[int]):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM", bias="none",
        trainable_token_indices={"embed_tokens": list(new_token_ids)} if new_token_ids else None)


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer a run uses: the adapter's when it has one, prepared (template, control tokens)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_source(cfg))
    new_ids = prepare_tokenizer(tokenizer, cfg)
    return tokenizer, new_ids


def load_model(cfg: ModelConfig, *, trainable: bool = True, seed: int = 0) -> LoadedModel:
    """Base (4-bit unless told otherwise) + tokenizer + control tokens + LoRA (new, or from adapter_path)."""

    choice = select_backend(cfg.backend)
    log.info("backend: %s (%s)", choice.name, choice.reason)
    dtype = compute_dtype(cfg.dtype)
    tokenizer, new_ids = load_tokenizer(cfg)
    torch.manual_seed(seed)
    model = _load_unsloth(cfg, dtype) if choice.name == "unsloth" else _load_hf(cfg, choice.name, dtype)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    trained_rows = control_rows_to_train(cfg, tokenizer)
    if cfg.adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.adapter_path, is_trainable=trainable)
    elif choice.name == "unsloth":
        from unsloth import FastLanguageModel

        model = FastLanguageModel.get_peft_model(
            model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules), random_state=seed,
            use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
            **({"trainable_token_indices": {"embed_tokens": trained_rows}} if trained_rows else {}))
    else:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if choice.name == "hf" and cfg.load_in_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        elif cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model = get_peft_model(model, _lora_config(cfg, trained_rows))
    _expose_output_bias(model)
    if not trainable:
        model.eval()
    return LoadedModel(model, tokenizer, choice, new_ids, control_token_ids(tokenizer, cfg.control_tokens))


def _expose_output_bias(model) -> None:
    """Let code that reads ``lm_head.weight``/``lm_head.bias`` directly see through PEFT's wrapper.

    With tied embeddings PEFT wraps the LM head in a TrainableTokensWrapper whose ``weight`` is the
    merged (differentiable) matrix but which has no ``bias``; TRL's fused log-prob head reads both.
    """
    head = model.get_output_embeddings()
    if head is not None and not hasattr(head, "bias"):
        original = getattr(head, "original_module", None)
        head.bias = getattr(original, "bias", None)


def save_adapter(loaded: LoadedModel, folder: str | Path) -> Path:
    """Adapter and tokenizer together: the tokenizer's new control tokens match the adapter's rows."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


def trainable_parameter_names(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]
