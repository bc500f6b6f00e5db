"""The shipped tiny reasoning model: loads like a hub model, always thinks, and thinks correctly."""

import json

import pytest
import torch


def test_tokenizer_round_trips_spaces_and_newlines(tmp_path):
    from transformers import AutoTokenizer

    from thinkless_lite.mini_base import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|im_start|>user\n7+3 *  2\n\n<|im_end|>\n<think>Let me  solve\n 7=7\n</think>5<|im_end|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(tokenizer("<think>", add_special_tokens=False)["input_ids"]) == 1
    # R1-style: the template forces the thinking opener after the generation prompt.
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "1+1"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>")


def test_shipped_base_loads_through_auto_classes(mini_base_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(mini_base_dir)
    tokenizer = AutoTokenizer.from_pretrained(mini_base_dir)
    assert model.config.model_type == "qwen2"
    assert "<short>" not in tokenizer.get_vocab() and "<think>" in tokenizer.get_vocab()
    summary = json.loads((mini_base_dir / "training_summary.json").read_text())
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def base_think_results(mini_base_dir):
    """Forced-think greedy answers of the full-precision base on the held-out split, 50 per level."""
    import warnings

    from thinkless_lite.config import ModelConfig
    from thinkless_lite.data.miniworld import benchmark_items
    from thinkless_lite.generation import SamplingSettings, generate
    from thinkless_lite.model import load_model
    from thinkless_lite.rewards import score_completion

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(ModelConfig(backend="full"), trainable=False)
    items = benchmark_items(per_level=50)
    with torch.no_grad():
        outs = generate(loaded.model, loaded.tokenizer, [i.question for i in items], mode="think",
                        settings=SamplingSettings(max_new_tokens=144), batch_size=100)
    by_level: dict[int, list[bool]] = {}
    for item, out in zip(items, outs):
        by_level.setdefault(item.difficulty, []).append(score_completion(out.completion, item.gold).correct)
    return {k: sum(v) / len(v) for k, v in sorted(by_level.items())}


@pytest.mark.slow
def test_base_step_by_step_accuracy_at_every_difficulty(base_think_results):
    print("forced-think accuracy by level:", base_think_results)
    assert set(base_think_results) == set(range(1, 9))
    for level, accuracy in base_think_results.items():
        assert accuracy >= 0.95, f"level {level}: {accuracy:.0%}"
