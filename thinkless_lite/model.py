"""Model backends and loading: one place decides how a base model becomes a trainable Thinkless model.

Backends:
  unsloth  Unsloth FastLanguageModel, 4-bit, its fused kernels (CUDA only)
  hf       transformers + bitsandbytes NF4 + PEFT LoRA (QLoRA; also runs on CPU)
  full     no quantisation, LoRA on a full-precision base (tiny models, debugging)
  auto     unsloth when CUDA and a working unsloth are present, else hf; the choice is logged

Control tokens are added when the tokenizer lacks them and reused when present; only the new
embedding rows train (PEFT ``trainable_token_indices``), so an adapter holds LoRA weights and a few rows
(0.6 MB on the mini base, 23 MB on SmolLM2-135M at r=16: ``benchmarks/adapter_size.py``).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from thinkless_lite.compat import bf16_native, four_bit_layout, plain_4bit_layout
from thinkless_lite.config import ModelConfig
from thinkless_lite.tokens import FALLBACK_CHAT_TEMPLATE, ControlTokens, neutralise_chat_template

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


# ---------------------------------------------------------------- tokenizer

def prepare_tokenizer(tokenizer, cfg: ModelConfig, end_ids: Iterable[int] = ()) -> list[int]:
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
    pad_ids = ensure_distinct_pad_token(tokenizer, end_ids)
    return pad_ids + ensure_control_tokens(tokenizer, tokens)


# Pad-like tokens that bases ship unused, most specific first (the list Unsloth's pad repair also uses).
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|finetune_right_pad|>", "<pad>", "[PAD]", "<PAD>", "<|pad|>",
                  "<|endoftext|>", "<fim_pad>", "<|fim_pad|>", "<｜▁pad▁｜>")
ADDED_PAD_TOKEN = "<|pad|>"


def ensure_distinct_pad_token(tokenizer, end_ids: Iterable[int] = ()) -> list[int]:
    """Give the tokenizer a pad token that ends nothing; return its id if one had to be added.

    ``end_ids`` are the model's other end-of-sequence ids (its generation config's), which TRL also
    stops at and keeps in the completion mask. Padding with any of them makes that token invisible
    wherever a mask is rebuilt as ``ids != pad`` (Unsloth's GRPO loss does exactly that, and would drop
    every answer's last token while TRL's normaliser still counts it), and makes a prompt's own turn-end
    tokens look like padding. A pad-like token the vocabulary already has is reused (Qwen2.5's
    ``<|fim_pad|>`` rather than its ``<|endoftext|>``, which ends a generation); only if there is none is
    ``<|pad|>`` added (one new embedding row).
    """
    ends = {tokenizer.eos_token_id, *end_ids}
    if tokenizer.pad_token is not None and tokenizer.pad_token_id not in ends:
        return []
    vocab = tokenizer.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and vocab[candidate] not in ends:
            tokenizer.pad_token = candidate
            return []
    tokenizer.add_special_tokens({"pad_token": ADDED_PAD_TOKEN})
    return [tokenizer.pad_token_id]


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


def _lora_config(cfg: ModelConfig, token_indices: dict | None):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM", bias="none",
        trainable_token_indices=token_indices)


def generation_end_ids(name_or_path: str) -> list[int]:
    """The end-of-sequence ids in a base's generation config (none when it has no such file)."""
    from transformers import GenerationConfig

    try:
        ids = GenerationConfig.from_pretrained(resolve_model_path(name_or_path)).eos_token_id
    except (OSError, ValueError):
        return []
    return [] if ids is None else [ids] if isinstance(ids, int) else list(ids)


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer a run uses: the adapter's when it has one, prepared (template, pad, control tokens)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_source(cfg))
    new_ids = prepare_tokenizer(tokenizer, cfg, generation_end_ids(cfg.name_or_path))
    return tokenizer, new_ids


def grow_vocabulary(model, tokenizer) -> int:
    """Resize the embeddings to the tokenizer; each new row (a control token, a pad) starts as the mean of
    the rows of its word's tokens (``<think>`` -> "think", ``</think>`` -> "/think"), on both sides of an
    untied head. Returns how many rows were added.

    Measured on SmolLM2-135M-Instruct (``benchmarks/control_row_init.py``, 30 warm-up steps, one seed):
    transformers' default leaves the rows random and small (norm 0.15x an average row), and the control
    token's held-out loss starts at 35; the plain mean row (Unsloth's default) starts at 17 but makes all
    three control tokens the *same* vector, so the model must first tell them apart, and after 30 steps
    it is still at 1.16; the word means start at 12 and reach the 0.69 floor (the warm-up data picks each
    mode half the time) with the lowest completion loss (0.161 against 0.184 random and 0.192 mean).
    Deterministic, so an adapter also loads onto a freshly resized base exactly.
    """
    old = model.get_input_embeddings().weight.shape[0]
    size = len(tokenizer)
    if old >= size:
        return 0
    model.resize_token_embeddings(size, mean_resizing=False)
    sources = []
    for token_id in range(old, size):
        word = re.sub(r"[<>|]", "", tokenizer.convert_ids_to_tokens(token_id)) or "token"
        pieces = [i for i in tokenizer(word, add_special_tokens=False)["input_ids"] if i < old]
        sources.append(pieces)
    layers = [model.get_input_embeddings(), model.get_output_embeddings()]
    seen = set()
    with torch.no_grad():
        for layer in layers:
            if layer is None or id(layer.weight) in seen:
                continue
            seen.add(id(layer.weight))
            weight = layer.weight
            mean = weight[:old].float().mean(dim=0)
            for offset, pieces in enumerate(sources):
                start = weight[pieces].float().mean(dim=0) if pieces else mean
                weight[old + offset] = start.to(weight.dtype)
    return size - old


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
    model = _load_unsloth(cfg, dtype) if choice.name == "unsloth" else _load_hf(cfg, choice.name, dtype)
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
    else:
        from peft import PeftModel, get_peft_model

        if trainable:
            model = _prepare_for_kbit_or_checkpointing(model, cfg, choice.name)
        if cfg.adapter_path:
            model = PeftModel.from_pretrained(model, cfg.adapter_path, is_trainable=trainable)
        else:
            model = get_peft_model(model, _lora_config(cfg, token_indices))
    _expose_output_bias(model)
    save_small_adapters(model)
    plain_4bit_layout(model)  # one layout for training and inference, on every CPU (compat explains)
    layout = four_bit_layout(model)
    if layout:
        log.info("4-bit layout: %s", layout)
    if not trainable:
        model.eval()
    return LoadedModel(model, tokenizer, choice, new_ids, control_token_ids(tokenizer, cfg.control_tokens))


def save_small_adapters(model) -> None:
    """Make this model's ``save_pretrained`` (and so every Trainer checkpoint and ``push_to_hub``) write the
    adapter alone: LoRA weights and the trained control rows, nothing else.

    PEFT's default (``save_embedding_layers="auto"``) saves both whole embedding tables once the vocabulary
    was resized, which the control tokens always do: ~250 MB for SmolLM2-135M, ~1.8 GB for a 151k-vocabulary
    1.5B model, although the trained rows are already in the adapter as trainable-token values and every
    other row is the base's. TRL's KL reference (the ``ref`` adapter) is rebuilt from the starting adapter
    whenever a trainer starts, so it is not saved either. Loading needs the base resized to the tokenizer,
    which :func:`load_model` does.
    """
    save = model.save_pretrained

    def save_pretrained(save_directory, *args, **kwargs):
        kwargs.setdefault("save_embedding_layers", False)
        kwargs.setdefault("selected_adapters", [name for name in model.peft_config if name != "ref"])
        return save(save_directory, *args, **kwargs)

    save_pretrained.__doc__ = save.__doc__
    model.save_pretrained = save_pretrained


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
