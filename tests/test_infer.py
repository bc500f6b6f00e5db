import warnings

import pytest
import torch

from thinkless_lite.config import ModelConfig
from thinkless_lite.generation import SamplingSettings, decide, generate, stream
from thinkless_lite.model import load_model
from thinkless_lite.tokens import format_prompt


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(ModelConfig(name_or_path=str(tiny_model_dir), backend="hf", lora_r=4, lora_alpha=8),
                          trainable=False)


def test_forced_modes_start_with_their_token_and_still_report_the_models_p_think(tiny):
    questions = ["1+2", "3*4-5", "9"]
    settings = SamplingSettings(max_new_tokens=6)
    _, _, chosen = decide(tiny.model, tiny.tokenizer, [format_prompt(tiny.tokenizer, q) for q in questions])
    for mode in ("think", "short"):
        out = generate(tiny.model, tiny.tokenizer, questions, mode=mode, settings=settings, batch_size=2)
        assert [g.mode for g in out] == [mode] * 3
        assert all(g.completion.startswith(f"<{mode}>") for g in out)
        assert all(1 <= g.num_tokens <= 6 for g in out)
        assert [g.p_think for g in out] == pytest.approx(chosen, abs=1e-5)   # forcing does not change P(think)


def test_p_think_is_the_renormalised_first_token_distribution(tiny):
    prompt = format_prompt(tiny.tokenizer, "4+4")
    _, _, p_think = decide(tiny.model, tiny.tokenizer, [prompt])
    batch = tiny.tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = tiny.model(**batch).logits[0, -1]
    probs = torch.softmax(logits, -1)
    expected = probs[tiny.control_ids["think"]] / (probs[tiny.control_ids["think"]] + probs[tiny.control_ids["short"]])
    assert abs(p_think[0] - expected.item()) < 1e-5


def test_tau_routes_by_threshold(tiny):
    out_all_think = generate(tiny.model, tiny.tokenizer, ["1+1", "2*3"], tau=0.0, settings=SamplingSettings(max_new_tokens=3))
    assert [g.mode for g in out_all_think] == ["think", "think"] and out_all_think[0].requested == "tau=0"
    p = out_all_think[0].p_think
    above = generate(tiny.model, tiny.tokenizer, ["1+1"], tau=min(1.0, p + 1e-3), settings=SamplingSettings(max_new_tokens=3))
    assert above[0].mode == "short"


def test_batching_does_not_change_greedy_answers(tiny):
    questions = ["1+2", "3*4-5", "9-1*2+3", "7"]
    settings = SamplingSettings(max_new_tokens=8)
    one = generate(tiny.model, tiny.tokenizer, questions, mode="think", settings=settings, batch_size=1)
    four = generate(tiny.model, tiny.tokenizer, questions, mode="think", settings=settings, batch_size=4)
    assert [g.completion for g in one] == [g.completion for g in four]


def test_stream_yields_decision_text_done(tiny):
    events = list(stream(tiny.model, tiny.tokenizer, "2+2", mode="think", settings=SamplingSettings(max_new_tokens=8)))
    kinds = [e.kind for e in events]
    assert kinds[0] == "decision" and kinds[-1] == "done" and events[0].mode == "think"
    final = events[-1].generation
    assert final.completion == "".join(e.text for e in events[:-1])
    batch = generate(tiny.model, tiny.tokenizer, ["2+2"], mode="think", settings=SamplingSettings(max_new_tokens=8))
    assert final.completion == batch[0].completion and final.num_tokens == batch[0].num_tokens


@pytest.mark.parametrize("kwargs, match", [({"mode": "ponder"}, "mode must be"), ({"tau": 1.5}, "tau must be"),
                                           ({"batch_size": 0}, "batch_size")])
def test_bad_arguments(tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(tiny.model, tiny.tokenizer, ["1+1"], **kwargs)


def test_answers_stop_at_the_models_end_token_even_when_the_tokenizer_names_another(mini_base_dir):
    """A GGUF tokenizer says eos = <|im_start|>; the model's generation config says <|im_end|>: both stop."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(ModelConfig(name_or_path=str(mini_base_dir), backend="hf"), trainable=False)
    settings = SamplingSettings(max_new_tokens=144)
    right = generate(loaded.model, loaded.tokenizer, ["1+2", "3*4-5"], mode="think", settings=settings)
    loaded.tokenizer.eos_token = "<|im_start|>"
    quirky = generate(loaded.model, loaded.tokenizer, ["1+2", "3*4-5"], mode="think", settings=settings)
    assert [g.num_tokens for g in quirky] == [g.num_tokens for g in right]
    assert all(g.num_tokens < 144 and g.answer for g in right)


def test_top_p_samples_only_inside_the_nucleus_and_top_p_1_is_plain_temperature_sampling():
    from thinkless_lite.generation import _sample

    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(logits / 0.7, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs  # the nucleus: most likely tokens until top_p is reached
    generator = torch.Generator().manual_seed(1)
    for top_p in (0.3, 0.8, 0.95):
        settings = SamplingSettings(temperature=0.7, top_p=top_p)
        drawn = torch.stack([_sample(logits, settings, generator) for _ in range(300)])
        for row in range(len(logits)):
            assert set(drawn[:, row].tolist()) <= set(order[row, mass_before[row] < top_p].tolist())
        assert any(len(set(drawn[:, row].tolist())) > 1 for row in range(len(logits)))  # still sampling
    plain, ours = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for _ in range(20):
        expected = torch.multinomial(probs, 1, generator=plain).squeeze(-1)
        assert torch.equal(_sample(logits, SamplingSettings(temperature=0.7, top_p=1.0), ours), expected)
    assert torch.equal(_sample(logits, SamplingSettings(temperature=0.0, top_p=0.5), generator), logits.argmax(-1))
