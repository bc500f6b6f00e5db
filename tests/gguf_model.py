"""A tiny transformer in a GGUF file, written with the ``gguf`` package: the hyperparameters and random weights
that the bring-your-own-model fixtures share (test_byo_model's byte-level BPE, test_gguf_sentencepiece's
SentencePiece families). The tokenizer is each fixture's own: open the writer, add it, then finish."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

D, FF, LAYERS, HEADS, KV = 32, 64, 2, 4, 2
HEAD_DIM = D // HEADS


def open_writer(path: Path, arch: str, vocab_size: int) -> gguf.GGUFWriter:
    """A writer holding the tiny ``arch`` model's hyperparameters (llama or gemma3)."""
    writer = gguf.GGUFWriter(str(path), arch)
    for add, value in [(writer.add_block_count, LAYERS), (writer.add_context_length, 256),
                       (writer.add_embedding_length, D), (writer.add_feed_forward_length, FF),
                       (writer.add_head_count, HEADS), (writer.add_head_count_kv, KV),
                       (writer.add_vocab_size, vocab_size), (writer.add_rope_dimension_count, HEAD_DIM)]:
        add(value)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    if arch == "gemma3":
        writer.add_key_length(HEAD_DIM)
        writer.add_value_length(HEAD_DIM)
        writer.add_sliding_window(128)
    return writer


def finish(writer: gguf.GGUFWriter, path: Path, arch: str, vocab_size: int) -> Path:
    """Random weights (seed 0) for every tensor of the tiny ``arch`` model, then the file written and closed."""
    rng = np.random.default_rng(0)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    norms = ["attn_norm", "ffn_norm"] + (["post_attention_norm", "post_ffw_norm"] if arch == "gemma3" else [])
    writer.add_tensor("token_embd.weight", weight(vocab_size, D))
    writer.add_tensor("output_norm.weight", np.ones(D, np.float32))
    if arch == "llama":  # gemma3 ties its output to the embedding
        writer.add_tensor("output.weight", weight(vocab_size, D))
    for i in range(LAYERS):
        for name, shape in [("attn_q", (D, D)), ("attn_k", (KV * HEAD_DIM, D)), ("attn_v", (KV * HEAD_DIM, D)),
                            ("attn_output", (D, D)), ("ffn_gate", (FF, D)), ("ffn_up", (FF, D)),
                            ("ffn_down", (D, FF))]:
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        for name in norms:
            writer.add_tensor(f"blk.{i}.{name}.weight", np.ones(D, np.float32))
        if arch == "gemma3":
            for name in ("attn_q_norm", "attn_k_norm"):
                writer.add_tensor(f"blk.{i}.{name}.weight", np.ones(HEAD_DIM, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
