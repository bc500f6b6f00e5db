"""benchmarks/rl_step.py's compute floor: the matmul parameters a token goes through, each weight counted once."""

import sys
import warnings

import pytest
import torch

from thinkless_lite.config import ModelConfig
from thinkless_lite.model import load_model

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from rl_step import matmul_parameters, matmul_weights, weight_sweep_seconds  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def hand_count(config) -> int:
    """Per layer q, k, v, o and the three MLP matmuls, then the head once (tied or not, embeddings are lookups)."""
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * config.intermediate_size
    return config.num_hidden_layers * (attention + mlp) + config.vocab_size * hidden


def llama(device="cpu", *, tied=True, vocab=49_155, hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3):
    """SmolLM2-135M's architecture (its shapes by default) with randomly initialised weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=tied)
    with torch.device(device):
        return LlamaForCausalLM(config)


def with_lora(model, rows: dict):
    """LoRA on every projection, trainable control rows, and a second (KL reference) adapter, as DeGRPO runs."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                  trainable_token_indices=rows))
    peft_model.add_adapter("ref", peft_model.peft_config["default"])
    peft_model.set_adapter("default")
    return peft_model


def test_smollm2_135m_counts_its_134_5_million_matmul_parameters_once():
    """30 layers x 3.54 M + the tied 49,155 x 576 head once, with LoRA and control rows on (the old count: 354 M)."""
    model = llama("meta")
    expected = 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536) + 49_155 * 576
    assert expected == hand_count(model.config) == 134_481_600
    assert matmul_parameters(model) == expected
    assert matmul_parameters(with_lora(model, {"embed_tokens": [49_152, 49_153, 49_154]})) == expected


@pytest.mark.parametrize("tied", [True, False])
def test_a_smollm2_shaped_model_with_lora_and_control_rows_matches_the_hand_count(tied):
    model = llama(tied=tied, vocab=64, hidden=32, intermediate=48, layers=2, heads=4, kv_heads=2)
    expected = hand_count(model.config)
    assert matmul_parameters(model) == expected
    rows = {"embed_tokens": [61, 62, 63]} if tied else {"embed_tokens": [61, 62, 63], "lm_head": [61, 62, 63]}
    peft_model = with_lora(model, rows)
    assert (peft_model.get_base_model().lm_head.token_adapter.base_layer.weight is
            peft_model.get_base_model().model.embed_tokens.token_adapter.base_layer.weight) == tied
    assert matmul_parameters(peft_model) == expected
    weights = matmul_weights(peft_model)  # the weight sweep's: the same weights, each once
    assert sum(w.numel() for w in weights) == expected
    wall, cpu = weight_sweep_seconds(weights, rows=4, repeats=2)
    assert wall > 0 and cpu > 0


def test_the_mini_base_in_4_bits_with_its_adapter_matches_the_hand_count(mini_base_dir):
    """4-bit layers count by their logical shape, not their packed storage."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(ModelConfig(name_or_path=str(mini_base_dir), backend="hf", lora_r=4, lora_alpha=8))
    config = loaded.model.config
    assert config.tie_word_embeddings
    assert matmul_parameters(loaded.model) == hand_count(config)
    assert sum(w.numel() for w in matmul_weights(loaded.model)) == hand_count(config)


def test_the_decode_benchmark_times_the_matmuls_a_model_makes_and_nothing_else():
    """decode_step's lower bound counts every matmul of a forward (a Linear with bias, one without, a batched
    attention product) and none of the elementwise work around them."""
    from decode_step import matmul_seconds_in

    torch.manual_seed(0)
    with_bias, without = torch.nn.Linear(64, 64), torch.nn.Linear(64, 32, bias=False)
    x, keys = torch.randn(8, 64), torch.randn(4, 64, 16)

    def forward():
        hidden = torch.nn.functional.silu(with_bias(x)) * 2 + 1
        torch.bmm(hidden.view(4, 2, 64), keys).softmax(-1)
        return without(hidden).exp()

    seconds, calls = matmul_seconds_in(forward)
    assert calls == 3 and seconds > 0
    elementwise_only, none = matmul_seconds_in(lambda: (x.exp() * 2 + x).softmax(-1))
    assert none == 0 and elementwise_only == 0
