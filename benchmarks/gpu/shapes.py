"""Random-weight checkpoints of the real Qwen2.5 shapes, so the GPU check needs no hub access.

Memory and speed depend on shapes, not on weight values: a Qwen2 built from the hub models' config
numbers, saved in bf16 like a hub checkpoint, loads through the package exactly as the real one would.
The tokenizer is byte-level (one token per byte, no merges) padded to the real length, so a prompt of N
lower-case letters and spaces is exactly N tokens.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

# config.json of DeepSeek-R1-Distill-Qwen-1.5B (the T4 recipe's model: Qwen2.5-Math-1.5B's numbers with an
# UNTIED output head, so the control rows live in the embedding and in the head) and of Qwen2.5-7B (untied
# too); rope values are the Qwen2.5 ones for both (speed and memory do not depend on them). "tiny" (tied) and
# "tiny-untied" are for CPU smoke runs and tests: the dry run uses both, so both layouts of the rows run.
_QWEN2_COMMON = dict(hidden_act="silu", rms_norm_eps=1e-6, initializer_range=0.02, use_sliding_window=False,
                     attention_dropout=0.0, rope_theta=1_000_000.0, max_position_embeddings=32768)
SHAPES: dict[str, dict] = {
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=False, **_QWEN2_COMMON),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=151936, tie_word_embeddings=False, **_QWEN2_COMMON),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True, **_QWEN2_COMMON),
    "tiny-untied": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False, **_QWEN2_COMMON),
}
# The Qwen2.5 tokenizer holds 151,665 tokens (the embedding matrix is padded to 151,936).
TOKENIZER_LEN = {"1.5b": 151665, "7b": 151665, "tiny": None, "tiny-untied": None}


def count_params(s: dict) -> int:
    """Parameters of a Qwen2 of shape ``s`` (the hub model cards say 1.78B and 7.61B)."""
    h, i, n, v = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], s["vocab_size"]
    kv = h // s["num_attention_heads"] * s["num_key_value_heads"]
    per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    return v * h * (1 if s["tie_word_embeddings"] else 2) + n * per_layer + h


def build_tokenizer(total_len: int | None):
    """A byte-level ``Qwen2Tokenizer`` padded to ``total_len`` tokens; pad ``<|endoftext|>`` (id 0), EOS
    ``<|im_end|>``, so the pad token ends nothing. Fillers (" AB"...) are never produced by lower-case text.
    ``<think>``/``</think>`` exist (as in R1-Distill); ``<short>`` is left for the package to add."""
    import itertools
    import string

    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    from thinkless_lite.mini_base import MINI_CHAT_TEMPLATE, byte_alphabet

    base = ["<|endoftext|>"] + byte_alphabet()
    added = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    n_fillers = max(0, (total_len or 0) - len(base) - len(added))
    fillers = []
    for width in range(2, 6):
        for combo in itertools.product(string.ascii_uppercase, repeat=width):
            if len(fillers) == n_fillers:
                break
            fillers.append("Ġ" + "".join(combo))
    vocab = {tok: i for i, tok in enumerate(base + fillers)}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", clean_up_tokenization_spaces=False)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in added[2:]])
    tokenizer.chat_template = MINI_CHAT_TEMPLATE
    return tokenizer


def build_checkpoint(shape: str, folder: Path) -> dict:
    """Random-weight Qwen2 of ``shape`` + tokenizer in ``folder`` (bf16; fp32 for tiny). Initialised on the
    GPU when it has room (seconds instead of minutes for 7B), written to a partial folder first."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    began = time.perf_counter()
    tokenizer = build_tokenizer(TOKENIZER_LEN[shape])
    dtype = torch.float32 if shape.startswith("tiny") else torch.bfloat16
    config = Qwen2Config(**SHAPES[shape], bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    device = "cpu"
    if torch.cuda.is_available() and torch.cuda.mem_get_info()[0] > 1.3 * count_params(SHAPES[shape]) * 2:
        device = "cuda"
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    n_params = sum(p.numel() for p in model.parameters())
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="4GB")
    tokenizer.save_pretrained(tmp)
    del model
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return {"shape": shape, "parameters": n_params, "built_on": device, "dtype": str(dtype).replace("torch.", ""),
            "tokenizer_len": len(tokenizer), "seconds": round(time.perf_counter() - began, 2),
            "bytes_on_disk": sum(p.stat().st_size for p in folder.iterdir())}
