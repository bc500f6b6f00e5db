"""The tokenizer and the vocabulary: a base's tokenizer made ready for Thinkless, and the embedding grown to match.

Its own module because this is pure tokenizer work, apart from loading: pad token, chat template, BOS,
control tokens at fresh ids, the checks that refuse a tokenizer that cannot be the model's, and the new
embedding rows' starting values. The tokenizer is read by name through :mod:`thinkless_lite.base`; no
weights are loaded here.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch

from thinkless_lite.base import base_embedding_rows, base_generation_config, base_tokenizer_source
from thinkless_lite.config import ConfigError, ModelConfig
from thinkless_lite.tokens import FALLBACK_CHAT_TEMPLATE, ControlTokens, neutralise_chat_template


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer a run uses: the adapter's when it has one, prepared (template, pad, control tokens)."""
    from transformers import AutoTokenizer

    source = _tokenizer_source(cfg)
    tokenizer = AutoTokenizer.from_pretrained(source)
    new_ids = prepare_tokenizer(tokenizer, cfg, end_token_ids(tokenizer, base_generation_config(cfg.name_or_path)),
                                base_embedding_rows(cfg.name_or_path))
    check_tokenizer(tokenizer, source)
    return tokenizer, new_ids


def _tokenizer_source(cfg: ModelConfig) -> str:
    """An adapter folder saved by us carries the tokenizer that matches its embedding rows; else
    ``model.tokenizer`` when set (a tokenizer from elsewhere than the weights), else the base's."""
    if cfg.adapter_path and (Path(cfg.adapter_path) / "tokenizer_config.json").exists():
        return cfg.adapter_path
    return base_tokenizer_source(cfg)


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


def end_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS first, then the generation config's, each once.

    Both count, as they do for TRL and ``model.generate``: a GGUF tokenizer, or one whose EOS is the
    document end rather than the chat turn's, would never stop a chat answer alone, and a generation
    config need not list the tokenizer's EOS. ``generation_config``: a model's, a base's read from disk,
    or None (the tokenizer's EOS only).
    """
    config_ids = getattr(generation_config, "eos_token_id", None)
    config_ids = [config_ids] if isinstance(config_ids, int) else list(config_ids or [])
    return [i for i in dict.fromkeys([tokenizer.eos_token_id, *config_ids]) if i is not None]


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
                               "; add control tokens with vocabulary.add_fresh_tokens")
        if text in set(new) and token_id < base_rows:
            raise RuntimeError(f"control token {text!r} has id {token_id}, a row of the base's {base_rows}-row "
                               "embedding that was never initialised from its word; new control tokens must get "
                               "ids past the base's rows (vocabulary.add_fresh_tokens)")


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
            f"({', '.join(whole[:4])}): it is not the tokenizer the model was trained with. A .gguf's tokenizer is "
            "rebuilt from the file for SentencePiece (tokenizer.ggml.model=llama: Llama 2, Mistral, Gemma) and read "
            "with its merges for GPT-2 BPE (gpt2: Llama 3, Qwen, SmolLM2); other tokenizer models, or a file that "
            "lacks its merges or scores, need the original. Set model.tokenizer to the model's original tokenizer "
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
