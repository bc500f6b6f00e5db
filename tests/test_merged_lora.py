"""Generation on merged LoRA weights (compat.merged_lora_weights): the same tokens, the model's weights untouched."""

import warnings

import pytest
import torch

from thinkless_lite.compat import merged_lora_weights
from thinkless_lite.config import ModelConfig
from thinkless_lite.generation import SamplingSettings, generate, stream
from thinkless_lite.model import load_model

QUESTIONS = ["1+2", "3*4-1", "9-9", "5+5*5", "7-2+8"]


def loaded_with_trained_lora(folder, *, four_bit: bool):
    """The tiny model with LoRA whose B matrices are not zero (a fresh adapter's delta is zero: nothing to merge)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(ModelConfig(name_or_path=str(folder), backend="hf", lora_r=4, lora_alpha=8,
                                        load_in_4bit=four_bit))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in loaded.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return loaded


def lora_calls(model) -> list:
    """A list that grows by one at every call of a LoRA A matrix (the unmerged path)."""
    calls = []
    for name, module in model.named_modules():
        if name.endswith("lora_A.default"):
            module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def snapshot(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("four_bit", [False, True])
def test_merged_generation_decodes_the_same_tokens_and_leaves_the_weights_as_they_were(tiny_model_dir, four_bit):
    loaded = loaded_with_trained_lora(tiny_model_dir, four_bit=four_bit)
    model, tokenizer = loaded.model, loaded.tokenizer
    before = snapshot(model)
    calls = lora_calls(model)
    for settings in (SamplingSettings(max_new_tokens=24), SamplingSettings(max_new_tokens=24, temperature=1.0, seed=3)):
        unmerged = generate(model, tokenizer, QUESTIONS, settings=settings, merge_lora=False)
        assert calls, "the unmerged path runs the LoRA matrices"
        calls.clear()
        merged = generate(model, tokenizer, QUESTIONS, settings=settings)
        assert not calls, "merged, no LoRA matrix runs"
        assert [g.completion for g in merged] == [g.completion for g in unmerged]
        assert [g.num_tokens for g in merged] == [g.num_tokens for g in unmerged]
        assert max(g.num_tokens for g in merged) > 5  # really decoded, not stopped at once
    greedy = SamplingSettings(max_new_tokens=24)
    streamed = {merge: list(stream(model, tokenizer, QUESTIONS[0], settings=greedy, merge_lora=merge))[-1].generation
                for merge in (True, False)}
    assert streamed[True].completion == streamed[False].completion
    assert streamed[True].num_tokens == streamed[False].num_tokens
    after = snapshot(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not any("forward" in vars(m) for m in model.modules()), "every forward restored"


def test_logits_agree_and_a_model_in_training_mode_is_left_as_it_is(tiny_model_dir):
    loaded = loaded_with_trained_lora(tiny_model_dir, four_bit=False)
    model = loaded.model
    ids = loaded.tokenizer(["1+2=3, 4*5=20"], return_tensors="pt").input_ids
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with merged_lora_weights(model):
            got = model(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    model.train()
    calls = lora_calls(model)
    with merged_lora_weights(model):
        assert not any("forward" in vars(m) for m in model.modules())
        model(input_ids=ids)
    assert calls


def test_dora_and_adapter_names_calls_keep_peft_s_forward():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    dora = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)).eval()
    with merged_lora_weights(dora):
        assert not any("forward" in vars(m) for m in dora.modules())
    plain = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj"])).eval()
    calls = lora_calls(plain)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad(), merged_lora_weights(plain):
        plain(input_ids=ids, adapter_names=["default"])
        assert calls, "a call naming its adapters runs PEFT's own forward"
        calls.clear()
        plain(input_ids=ids)
        assert not calls
