"""A base model read by name, before it becomes a Thinkless model: where its files are (the shipped mini base,
a ``.gguf`` converted once, a folder or a hub id), where its own tokenizer comes from, what its config says
(generation config, embedding rows), and its weights through transformers (:func:`load_base`, which the
warm-up teachers use too). The bottom of the loader: :mod:`thinkless_lite.vocabulary`,
:mod:`thinkless_lite.control_rows` and :mod:`thinkless_lite.model` read a base only through here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from thinkless_lite.config import ModelConfig

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


def base_tokenizer_source(cfg: ModelConfig) -> str:
    """Where the base's own tokenizer (before control tokens) comes from."""
    return resolve_model_path(cfg.tokenizer) if cfg.tokenizer else resolve_model_path(cfg.name_or_path)


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
