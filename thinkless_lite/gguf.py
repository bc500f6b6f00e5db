"""A ``.gguf`` file as a base model: converted once to a cached Hugging Face folder, then loaded like any other.

transformers reads GGUF (with the ``gguf`` package) by dequantising it to plain weights, which takes
tens of seconds and has quirks we fix once, at conversion:

* the tokenizer comes back with ``eos`` = ``bos`` (``<|im_start|>`` on SmolLM2) and no pad, although the
  file's own metadata (``tokenizer.ggml.eos_token_id``, seen in the model config) names the turn end;
* ``save_pretrained`` refuses a model still marked as GGUF-quantised, although its weights are plain;
* the tokenizer drops what the file says about BOS (``tokenizer.ggml.add_bos_token``) and, for some
  families, leaves the file's control tokens (``token_type`` CONTROL / USER_DEFINED) as plain vocabulary
  entries that text never encodes to, so a chat marker becomes a dozen character tokens;
* a SentencePiece file (``tokenizer.ggml.model = llama``: Llama 2, Mistral, Gemma) comes back as a Unigram
  model (Gemma: text splits into characters) or with merges found by a list search (Llama: minutes on a
  32k vocabulary), so :func:`sentencepiece_tokenizer` rebuilds it from the file's own pieces and scores.

GPT-2 BPE files (``gpt2``: Llama 3, Qwen, SmolLM2) keep transformers' tokenizer, which reads their merges.
What the conversion cannot repair (another tokenizer model, a BPE file without merges) is caught by
:func:`thinkless_lite.vocabulary.check_tokenizer` at load time; ``model.tokenizer`` then takes the tokenizer
from the model's original folder or hub id.

The folder lands in ``$THINKLESS_LITE_CACHE`` (default ``~/.cache/thinkless_lite``) under ``gguf/``,
keyed by the file's name, size and modification time; a half-written conversion is never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("thinkless_lite")

CACHE_ENV = "THINKLESS_LITE_CACHE"
COMPLETE_MARKER = "conversion_complete"
# Bumped when the conversion itself changes, so a folder converted by older code is redone (2: BOS policy
# and control tokens from the file's metadata; 3: SentencePiece tokenizers rebuilt from the file).
CONVERSION_VERSION = 3


def is_gguf(name_or_path: str | os.PathLike) -> bool:
    return str(name_or_path).lower().endswith(".gguf")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "thinkless_lite")


def converted_folder(gguf_path: str | os.PathLike) -> Path:
    """Where the conversion of this exact file lives (it changes when the file does)."""
    path = Path(gguf_path).resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}:{CONVERSION_VERSION}".encode()).hexdigest()[:12]
    return cache_root() / "gguf" / f"{path.stem}-{key}"


def gguf_to_hf(gguf_path: str | os.PathLike) -> Path:
    """The cached Hugging Face folder of ``gguf_path``, converting it the first time (fp32 weights)."""
    source = Path(gguf_path)
    if not source.is_file():
        raise FileNotFoundError(f"model.name_or_path={str(gguf_path)!r} ends in .gguf but is not a file; give the "
                                "path of a local .gguf (hub GGUF repos: download the file first)")
    target = converted_folder(source)
    if (target / COMPLETE_MARKER).exists():
        return target
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        from thinkless_lite.config import ConfigError  # the CLI prints it as one line, no traceback

        raise ConfigError(f"model.name_or_path={str(gguf_path)!r} is a .gguf file, and reading one needs the gguf "
                          "package, which is not installed: pip install 'thinkless-lite[gguf]' (or pip install "
                          "gguf==0.19.0), then run again") from None
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face folder (once): %s", source, target)
    fields = GGUFReader(str(source)).fields  # one parse for both uses: a 256k vocabulary takes tens of seconds
    tokenizer = sentencepiece_tokenizer(fields) or AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    fix_gguf_tokenizer(tokenizer, model.config)
    apply_gguf_tokenizer_metadata(tokenizer, read_tokenizer_metadata(fields))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    unmark_dequantised(model)
    # Each process writes a folder of its own and renames it into place: two processes converting at once (two
    # accelerate ranks, two test workers) never read or remove each other's half-written files.
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / COMPLETE_MARKER).write_text(str(source.resolve()) + "\n")
    try:
        if not (target / COMPLETE_MARKER).exists():  # else another process finished first: the same conversion
            shutil.rmtree(target, ignore_errors=True)  # an unfinished folder of an interrupted conversion
            try:
                partial.rename(target)
            except OSError:  # another process renamed its folder into place between the check and here
                if not (target / COMPLETE_MARKER).exists():
                    raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # ours, when it was not renamed into place
    return target


def fix_gguf_tokenizer(tokenizer, config) -> None:
    """End of sequence from the file's metadata (the model config), pad unset so the loader picks a distinct one."""
    eos_id = config.eos_token_id[0] if isinstance(config.eos_token_id, (list, tuple)) else config.eos_token_id
    if eos_id is not None and tokenizer.eos_token_id != eos_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(int(eos_id))
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.pad_token = None


# GGUF token types (gguf.TokenType): CONTROL marks special tokens, USER_DEFINED added ones.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6
SENTENCEPIECE = "llama"  # tokenizer.ggml.model of a SentencePiece vocabulary


def sentencepiece_tokenizer(fields):
    """The file's own SentencePiece tokenizer as a fast tokenizer, or None when its tokenizer model is another
    (``fields``: a ``gguf.GGUFReader``'s).

    SentencePiece BPE repeatedly merges the adjacent pair whose merged piece scores highest, with byte
    fallback for what no piece covers: that is a ``tokenizers`` BPE whose merges are every split of a normal
    piece into two pieces, ranked by the merged piece's score (transformers' ``generate_merges``, as its
    SentencePiece converters use). Spaces become ``▁``; the file's space prefix goes before the text and
    after each control or user-defined token, as llama.cpp does. Control tokens are special, user-defined
    ones plain added tokens (SentencePiece's own rule); BOS/EOS/UNK/PAD, the BOS policy and the chat template
    are the file's.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import generate_merges

    def value(key, default=None):
        field = fields.get(key)
        return default if field is None else field.contents()

    if value("tokenizer.ggml.model") != SENTENCEPIECE or "tokenizer.ggml.scores" not in fields:
        return None
    tokens, scores = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.scores")
    types = value("tokenizer.ggml.token_type", [NORMAL] * len(tokens))
    vocab: dict[str, int] = {}
    for token_id, text in enumerate(tokens):
        vocab.setdefault(text, token_id)  # a duplicate string keeps its first id (a hole, as transformers leaves)
    normal = {text: score for text, score, kind in zip(tokens, scores, types) if kind == NORMAL}
    merges = generate_merges(vocab, normal, skip_tokens=[t for t in vocab if t not in normal])
    ids = {"bos": value("tokenizer.ggml.bos_token_id"), "eos": value("tokenizer.ggml.eos_token_id"),
           "unk": value("tokenizer.ggml.unknown_token_id"), "pad": value("tokenizer.ggml.padding_token_id")}
    special = {name: tokens[i] for name, i in ids.items() if i is not None and 0 <= i < len(tokens)}
    backend = Tokenizer(models.BPE(vocab, merges, unk_token=special.get("unk"), fuse_unk=True,
                                   byte_fallback=BYTE in types))
    prefix = bool(value("tokenizer.ggml.add_space_prefix", True))  # llama.cpp's default for SentencePiece
    space = "\u2581"
    backend.normalizer = normalizers.Sequence(([normalizers.Prepend(space)] if prefix else [])
                                              + [normalizers.Replace(" ", space)])
    backend.decoder = decoders.Sequence([decoders.Replace(space, " "), decoders.ByteFallback(), decoders.Fuse()]
                                        + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    backend.add_special_tokens([AddedToken(text, special=True, normalized=False)
                                for text, kind in zip(tokens, types) if kind in (CONTROL, UNKNOWN)])
    backend.add_tokens([AddedToken(text, special=False, normalized=False)
                        for text, kind in zip(tokens, types) if kind == USER_DEFINED])
    chat_template = value("tokenizer.chat_template")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, **{f"{name}_token": text for name, text in special.items()},
        add_bos_token=bool(value("tokenizer.ggml.add_bos_token", True)),
        add_eos_token=bool(value("tokenizer.ggml.add_eos_token", False)), clean_up_tokenization_spaces=False,
        **({"chat_template": chat_template} if chat_template else {}))


def read_tokenizer_metadata(fields) -> dict:
    """What the file (``fields``: a ``gguf.GGUFReader``'s) says about its tokenizer that transformers' reader drops:
    ``add_bos_token``, ``add_eos_token`` (when present) and the tokens typed CONTROL / USER_DEFINED, as
    (text, id, special)."""
    out: dict = {}
    for key in ("add_bos_token", "add_eos_token"):
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None:
            out[key] = bool(field.contents())
    tokens, types = fields.get("tokenizer.ggml.tokens"), fields.get("tokenizer.ggml.token_type")
    if tokens is not None and types is not None:
        kinds = types.contents()
        marked = [i for i, kind in enumerate(kinds) if kind in (CONTROL, USER_DEFINED)]
        out["added"] = [(tokens.contents(i), i, kinds[i] == CONTROL) for i in marked]
    return out


def apply_gguf_tokenizer_metadata(tokenizer, metadata: dict) -> None:
    """Register the file's CONTROL / USER_DEFINED tokens as added tokens (with their own ids: a string the
    vocabulary holds keeps its id), and record its BOS/EOS policy in the tokenizer's config."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    have = {str(token) for token in tokenizer.added_tokens_decoder.values()}
    for special in (True, False):
        new = [AddedToken(text, special=special, normalized=False) for text, token_id, is_special in
               metadata.get("added", []) if is_special == special and text not in have and vocab.get(text) == token_id]
        if new:
            tokenizer.add_tokens(new, special_tokens=special)
    after = tokenizer.get_vocab()
    moved = {t: (i, after.get(t)) for t, i in vocab.items() if after.get(t) != i}
    if moved:
        raise RuntimeError(f"registering the GGUF's control tokens moved ids: {dict(list(moved.items())[:5])}")
    if metadata.get("add_bos_token") and tokenizer.bos_token is not None:
        tokenizer.add_bos_token = True
    if "add_eos_token" in metadata and getattr(tokenizer, "add_eos_token", False) != metadata["add_eos_token"]:
        tokenizer.add_eos_token = metadata["add_eos_token"]


def unmark_dequantised(model) -> None:
    """transformers dequantises GGUF on load but keeps it marked quantised, which blocks ``save_pretrained``."""
    for owner in (model, model.config):
        for attribute in ("hf_quantizer", "quantization_config"):
            if hasattr(owner, attribute):
                try:
                    delattr(owner, attribute)
                except AttributeError:
                    setattr(owner, attribute, None)
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
