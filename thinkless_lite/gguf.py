"""A ``.gguf`` file as a base model: converted once to a cached Hugging Face folder, then loaded like any other.

transformers reads GGUF (with the ``gguf`` package) by dequantising it to plain weights, which takes
tens of seconds and has two quirks we fix once, at conversion:

* the tokenizer comes back with ``eos`` = ``bos`` (``<|im_start|>`` on SmolLM2) and no pad, although the
  file's own metadata (``tokenizer.ggml.eos_token_id``, seen in the model config) names the turn end;
* ``save_pretrained`` refuses a model still marked as GGUF-quantised, although its weights are plain;
* the tokenizer drops what the file says about BOS (``tokenizer.ggml.add_bos_token``) and, for some
  families, leaves the file's control tokens (``token_type`` CONTROL / USER_DEFINED) as plain vocabulary
  entries that text never encodes to, so a chat marker becomes a dozen character tokens.

What the conversion cannot repair (a tokenizer rebuilt at character level, seen on a Gemma-family file) is
caught by :func:`thinkless_lite.vocabulary.check_tokenizer` at load time; ``model.tokenizer`` then takes the
tokenizer from the model's original folder or hub id.

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
# and control tokens from the file's metadata).
CONVERSION_VERSION = 2


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face folder (once): %s", source, target)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    fix_gguf_tokenizer(tokenizer, model.config)
    apply_gguf_tokenizer_metadata(tokenizer, read_tokenizer_metadata(source))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    unmark_dequantised(model)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / COMPLETE_MARKER).write_text(str(source.resolve()) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def fix_gguf_tokenizer(tokenizer, config) -> None:
    """End of sequence from the file's metadata (the model config), pad unset so the loader picks a distinct one."""
    eos_id = config.eos_token_id[0] if isinstance(config.eos_token_id, (list, tuple)) else config.eos_token_id
    if eos_id is not None and tokenizer.eos_token_id != eos_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(int(eos_id))
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.pad_token = None


# GGUF token types (gguf.TokenType): CONTROL marks special tokens, USER_DEFINED added ones.
CONTROL, USER_DEFINED = 3, 4


def read_tokenizer_metadata(gguf_path: str | os.PathLike) -> dict:
    """What the file says about its tokenizer that transformers' reader drops: ``add_bos_token``,
    ``add_eos_token`` (when present) and the tokens typed CONTROL / USER_DEFINED, as (text, id, special)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    fields = reader.fields
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
