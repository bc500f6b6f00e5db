"""Decoding only the rows that have not ended (thinkless_lite.ended_rows): the same answers, fewer rows decoded, and
``generate`` / ``forward`` given back as they were."""

import warnings

import pytest
import torch

import thinkless_lite.ended_rows as ended_rows
from thinkless_lite.config import ModelConfig
from thinkless_lite.ended_rows import ended_rows_dropped
from thinkless_lite.generation import SamplingSettings, generate
from thinkless_lite.model import load_model

# Mini-world sums of 1-4 digits: the pretrained mini base answers them in 15 to 70 tokens, so rows end at many times.
QUESTIONS = ["What is 3 + 4?", "What is 12 + 345?", "What is 7 + 8?", "What is 123 + 4567?", "What is 88 + 99?",
             "What is 1 + 2?", "What is 999 + 1?", "What is 5071 + 2943?"]


@pytest.fixture(scope="module")
def mini(mini_base_dir):
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(ModelConfig(name_or_path=str(mini_base_dir), backend="hf", lora_r=4, lora_alpha=8))


@pytest.fixture
def rows_decoded(monkeypatch):
    """The number of rows each decode step ran on (one entry per step), while dropping."""
    seen = []
    decode = ended_rows._LiveRows._decode
    monkeypatch.setattr(ended_rows._LiveRows, "_decode", lambda self, *a: seen.append(len(self.rows)) or decode(self, *a))
    return seen


@pytest.mark.parametrize("settings", [SamplingSettings(max_new_tokens=96),
                                      SamplingSettings(max_new_tokens=96, temperature=0.6, seed=3)],
                         ids=["greedy", "sampled"])
def test_the_same_answers_from_fewer_rows(mini, rows_decoded, settings):
    model, tokenizer = mini.model, mini.tokenizer
    kept = generate(model, tokenizer, QUESTIONS, settings=settings, drop_ended_rows=False)
    assert not rows_decoded
    dropped = generate(model, tokenizer, QUESTIONS, settings=settings)
    assert [g.completion for g in dropped] == [g.completion for g in kept]
    assert [g.num_tokens for g in dropped] == [g.num_tokens for g in kept]
    lengths = sorted(g.num_tokens for g in kept)
    assert lengths[0] < lengths[-1] - 10, lengths  # rows really ended at different times
    assert rows_decoded[0] == len(QUESTIONS) and len(set(rows_decoded)) >= 3, rows_decoded
    assert sum(rows_decoded) < len(QUESTIONS) * len(rows_decoded) * 0.8  # most of the padding is gone


def test_generate_and_forward_are_given_back_even_when_generate_fails(mini):
    model = mini.model
    inner = model.get_base_model()
    assert "generate" not in model.__dict__ and "forward" not in inner.__dict__
    with pytest.raises(ValueError):
        with ended_rows_dropped(model):
            assert "generate" in model.__dict__
            model.generate(input_ids=torch.tensor([[1, 2]]), max_new_tokens=-1)  # transformers refuses
    assert "generate" not in model.__dict__ and "forward" not in inner.__dict__
    with ended_rows_dropped(model, enabled=False):
        assert "generate" not in model.__dict__


def test_a_plain_transformers_model_too(mini_base_dir, rows_decoded):
    """Not only PEFT models: the forward patched is the model's own (here the full-precision base as transformers
    loads it, so no bitsandbytes kernel, whose path may depend on the CPU and the row count, is involved)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    inner = AutoModelForCausalLM.from_pretrained(mini_base_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(mini_base_dir, padding_side="left")
    batch = tokenizer(QUESTIONS[:4], return_tensors="pt", padding=True)
    outs = []
    for drop in (False, True):
        with torch.no_grad(), ended_rows_dropped(inner, enabled=drop):
            outs.append(inner.generate(**batch, max_new_tokens=80, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=tokenizer.eos_token_id))
    assert torch.equal(outs[0], outs[1])
    assert len(set(rows_decoded)) >= 2, rows_decoded
