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
from thinkless_lite.config import ConfigError, ModelConfig
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

def prepare_tokenizer(tokenizer, cfg: ModelConfig, end_ids: Iterable[int] = (), base_rows: int = 0) -> list[int]:
    """Pad token, chat template (override, fallback, neutralised, BOS), control tokens. Returns new token ids.

    Control tokens are added as *non-special* tokens: TRL decodes completions with
    ``skip_special_tokens=True`` and the reward must still see which mode was chosen. Every token added
    here gets a fresh id past every id the tokenizer uses and every row of the base's embedding
    (``base_rows``), so :func:`grow_vocabulary` gives it a new row that starts at its word.
    """
    tokens = cfg.control_tokens
    if cfg.chat_template:
        tokenizer.chat_template = cfg.chat_template
    if not getattr(tokenizer, "chat_template", None):
        warnings.warn("tokenizer has no chat template; using a ChatML fallback (set model.chat_template to override)",
                      stacklevel=2)
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    tokenizer.chat_template = neutralise_chat_template(tokenizer.chat_template, tokens)
    move_bos_into_template(tokenizer)
    pad_ids = ensure_distinct_pad_token(tokenizer, end_ids, base_rows)
    return pad_ids + ensure_control_tokens(tokenizer, tokens, base_rows)


# Pad-like tokens that bases ship unused, most specific first (the list Unsloth's pad repair also uses).
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|finetune_right_pad|>", "<pad>", "[PAD]", "<PAD>", "<|pad|>",
                  "<|endoftext|>", "<fim_pad>", "<|fim_pad|>", "<｜▁pad▁｜>")
ADDED_PAD_TOKEN = "<|pad|>"


def ensure_distinct_pad_token(tokenizer, end_ids: Iterable[int] = (), base_rows: int = 0) -> list[int]:
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
    added = add_fresh_tokens(tokenizer, [ADDED_PAD_TOKEN], base_rows, special=True)
    tokenizer.pad_token = ADDED_PAD_TOKEN
    return added


def ensure_control_tokens(tokenizer, tokens: ControlTokens, base_rows: int = 0) -> list[int]:
    """Add the control strings the tokenizer lacks as single tokens at fresh ids (past every id the tokenizer
    uses and every one of the base's ``base_rows`` embedding rows); return the ids that are new.

    A plain ``add_tokens`` hands out ``len(tokenizer)``, which is an existing token's id when the vocabulary
    has a hole (a GGUF conversion that dropped a duplicate string), and a pretrained, never-initialised
    padding row when the embedding is larger than the vocabulary (Qwen: 151,936 rows for 151,665 tokens).
    Strings the tokenizer already holds are reused with their own ids and rows (``<think>`` on R1-Distill).
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens.all if t not in vocab]
    added = add_fresh_tokens(tokenizer, missing, base_rows) if missing else []
    for t in tokens.all:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"control token {t!r} does not encode to a single token (got {ids}); "
                             "choose strings the tokenizer can hold as one token")
    check_control_ids(tokenizer, tokens)
    return added


def control_token_ids(tokenizer, tokens: ControlTokens) -> dict[str, int]:
    return {"short": tokenizer.convert_tokens_to_ids(tokens.short), "think": tokenizer.convert_tokens_to_ids(tokens.think)}


def token_id_bound(tokenizer) -> int:
    """One past the highest id the tokenizer uses: the embedding rows it needs. ``len(tokenizer)`` counts
    strings, which is fewer when the ids have holes or tokens were placed past the base's rows."""
    return max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)


def add_fresh_tokens(tokenizer, strings: list[str], base_rows: int = 0, *, special: bool = False) -> list[int]:
    """Add ``strings`` as single (added) tokens at ids ``max(base_rows, token_id_bound)`` onwards; return them.

    ``tokenizers`` gives a new added token ``model.get_vocab_size()``, which is an existing token's id when
    the ids have a hole, and cannot be told another id. So the strings are first written into the model's
    own vocabulary at the ids chosen here, then registered as added tokens (which keeps a model id).
    Every id the tokenizer had is checked to be unchanged.
    """
    import json

    from tokenizers import AddedToken, Tokenizer

    strings = [s for s in strings if s not in tokenizer.get_vocab()]
    if not strings:
        return []
    start = max(int(base_rows), token_id_bound(tokenizer))
    before = tokenizer.get_vocab()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    data = json.loads(backend.to_str()) if backend is not None else None
    vocab = (data or {}).get("model", {}).get("vocab")
    if isinstance(vocab, dict):
        # Added tokens outside the model vocabulary keep their ids only if the model holds them too.
        for entry in data.get("added_tokens", []):
            vocab.setdefault(entry["content"], entry["id"])
        for offset, text in enumerate(strings):
            vocab[text] = start + offset
    elif isinstance(vocab, list) and len(vocab) == start:
        low = min((score for _, score in vocab), default=0.0)
        vocab.extend([text, low - 10.0] for text in strings)  # Unigram: ids are positions; never chosen by score
    else:
        raise ValueError(f"cannot give {strings} fresh ids past {start} in a {type(tokenizer).__name__} "
                         f"({(data or {}).get('model', {}).get('type', 'no tokenizers backend')}); set model.tokenizer "
                         "to a fast tokenizer (tokenizer.json) with the same ids")
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(data))
    tokenizer.add_tokens([AddedToken(text, special=special, normalized=False) for text in strings],
                         special_tokens=special)
    after = tokenizer.get_vocab()
    moved = {text: (i, after.get(text)) for text, i in before.items() if after.get(text) != i}
    if moved:
        raise RuntimeError(f"adding {strings} changed the ids of existing tokens: {dict(list(moved.items())[:5])}")
    ids = [after.get(text) for text in strings]
    if ids != list(range(start, start + len(strings))):
        raise RuntimeError(f"{strings} got ids {ids}, not the fresh ids {start}..{start + len(strings) - 1}")
    return ids


def check_control_ids(tokenizer, tokens: ControlTokens, *, base_rows: int = 0, new: Iterable[str] = ()) -> None:
    """Fail loudly when a control token shares its id with another token, or when one the base lacked
    (``new``) sits on one of the base's ``base_rows`` rows, which :func:`grow_vocabulary` never initialises."""
    owners: dict[int, list[str]] = {}
    for text, token_id in tokenizer.get_vocab().items():
        owners.setdefault(token_id, []).append(text)
    for text in tokens.all:
        token_id = tokenizer.convert_tokens_to_ids(text)
        if owners.get(token_id, []) != [text]:
            raise RuntimeError(f"control token {text!r} has id {token_id}, which is also "
                               f"{[o for o in owners.get(token_id, []) if o != text]}: it would train and read an "
                               "existing token's row. The tokenizer's ids have a hole (len(tokenizer) < highest id + 1)"
                               "; add control tokens with model.add_fresh_tokens")
        if text in set(new) and token_id < base_rows:
            raise RuntimeError(f"control token {text!r} has id {token_id}, a row of the base's {base_rows}-row "
                               "embedding that was never initialised from its word; new control tokens must get "
                               "ids past the base's rows (model.add_fresh_tokens)")


def bos_wanted(tokenizer) -> bool:
    """Whether the model expects its BOS token first: the tokenizer adds one (its config's ``add_bos_token``,
    which a GGUF conversion takes from ``tokenizer.ggml.add_bos_token``)."""
    if tokenizer.bos_token is None:
        return False
    if getattr(tokenizer, "add_bos_token", False):
        return True
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


SAMPLE_MESSAGES = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hello there"}]


def move_bos_into_template(tokenizer) -> bool:
    """BOS once, in the text: when the model wants BOS, the chat template writes it (``{{ bos_token }}`` is
    prepended when it does not) and the tokenizer stops adding it on its own.

    Every path then sees the same ids: TRL's trainers tokenise the formatted prompt with special tokens on,
    generation with them off; with BOS both in the template and added by the tokenizer, training would see
    two. Returns whether BOS is written.
    """
    if not bos_wanted(tokenizer):
        return False
    rendered = tokenizer.apply_chat_template(SAMPLE_MESSAGES, tokenize=False, add_generation_prompt=True)
    if not rendered.startswith(tokenizer.bos_token):
        tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    if hasattr(type(tokenizer), "add_bos_token"):  # a property whose setter rebuilds the post-processor
        tokenizer.add_bos_token = False
    ids = tokenizer("a")["input_ids"]
    if ids and ids[0] == tokenizer.bos_token_id:
        raise RuntimeError(f"{type(tokenizer).__name__} still adds {tokenizer.bos_token!r} on its own; its chat "
                           "template writes it already, so training would see it twice")
    return True


# A fixed English sample: any subword tokenizer holds most of these words whole.
SANITY_SAMPLE = "The quick brown fox jumps over the lazy dog. What is the answer to this question? Think about it."
CHARACTER_LEVEL = 0.7  # tokens per character at or above which a tokenizer is splitting text into characters
MARKER = re.compile(r"<[^<>\s]{1,40}>")


def check_tokenizer(tokenizer, source: str) -> None:
    """Refuse a tokenizer that cannot be the model's: ordinary text in single characters although the vocabulary
    holds whole words (a GGUF conversion that lost its merges or scores), or the chat template's markers not
    single tokens although the vocabulary holds them. Warn when a marker is not in the vocabulary at all (a
    fallback template the model never saw). A character-level vocabulary (the mini base) passes.
    """
    ids = tokenizer(SANITY_SAMPLE, add_special_tokens=False)["input_ids"]
    ratio = len(ids) / len(SANITY_SAMPLE)
    vocab = tokenizer.get_vocab()
    words = sorted({w for w in re.findall(r"[A-Za-z]{4,}", SANITY_SAMPLE)})
    whole = [w for w in words if any(form + w in vocab for form in ("", "\u0120", "\u2581", " "))]
    if ratio >= CHARACTER_LEVEL and whole:
        raise ConfigError(
            f"the tokenizer from {source} splits ordinary text into characters ({len(ids)} tokens for "
            f"{len(SANITY_SAMPLE)} characters of {SANITY_SAMPLE[:30]!r}...) although its vocabulary holds whole words "
            f"({', '.join(whole[:4])}): it is not the tokenizer the model was trained with (a tokenizer converted "
            "from a .gguf can lose its merges or scores). Set model.tokenizer to the model's original tokenizer "
            "(a folder or hub id with the same token ids)")
    rendered = tokenizer.apply_chat_template(SAMPLE_MESSAGES, tokenize=False, add_generation_prompt=True)
    broken, unknown = [], []
    for marker in dict.fromkeys(MARKER.findall(rendered)):
        count = len(tokenizer(marker, add_special_tokens=False)["input_ids"])
        if count > 1:
            (broken if marker in vocab else unknown).append(f"{marker} ({count} tokens)")
    if broken:
        raise ConfigError(
            f"the chat template's markers {', '.join(broken)} are in the vocabulary of the tokenizer from {source} "
            "but do not encode as single tokens: the tokenizer does not treat them as special (a tokenizer converted "
            "from a .gguf can lose them). Set model.tokenizer to the model's original tokenizer")
    if unknown:
        warnings.warn(f"the chat template writes {', '.join(unknown)}, which the tokenizer from {source} does not "
                      "hold as single tokens: the model never saw this format. Set model.chat_template to the "
                      "model's own format if it has one", stacklevel=2)


def base_embedding_rows(name_or_path: str) -> int:
    """Rows of the base's input embedding, from its config (no weights loaded); 0 when unknown."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    except (OSError, ValueError):
        return 0
    config = getattr(config, "get_text_config", lambda: config)()
    return int(getattr(config, "vocab_size", 0) or 0)


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
    from transformers import AutoTokenizer

    base_vocab = AutoTokenizer.from_pretrained(_base_tokenizer_source(cfg)).get_vocab()
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

    source = _tokenizer_source(cfg)
    tokenizer = AutoTokenizer.from_pretrained(source)
    new_ids = prepare_tokenizer(tokenizer, cfg, generation_end_ids(cfg.name_or_path),
                                base_embedding_rows(cfg.name_or_path))
    check_tokenizer(tokenizer, source)
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
    size = token_id_bound(tokenizer)
    if old >= size:
        return 0
    model.resize_token_embeddings(size, mean_resizing=False)
    sources = []
    owners = {token_id: text for text, token_id in tokenizer.get_vocab().items() if token_id >= old}
    for token_id in range(old, size):
        if token_id not in owners:  # an id no token uses: the plain mean
            sources.append([])
            continue
        word = re.sub(r"[<>|]", "", owners[token_id]) or "token"
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
