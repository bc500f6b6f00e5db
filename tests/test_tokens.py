import pytest

from thinkless_lite.tokens import (ControlTokens, format_completion, format_prompt, neutralise_chat_template,
                                   parse_completion)


def test_round_trip_think_and_short():
    text = format_completion("think", "5", "7+3=0\n0-5=5\n")
    parsed = parse_completion(text)
    assert (parsed.mode, parsed.reasoning, parsed.answer, parsed.format_ok) == ("think", "7+3=0\n0-5=5", "5", True)
    parsed = parse_completion(format_completion("short", "42"))
    assert (parsed.mode, parsed.reasoning, parsed.answer) == ("short", "", "42")


@pytest.mark.parametrize("junk", ["", "   ", "5", "answer: <short>5", "</think>5", None, 17, "<thin", "\x00<short>"])
def test_junk_has_no_mode(junk):
    parsed = parse_completion(junk)
    assert parsed.mode is None and not parsed.format_ok


def test_unclosed_think_is_not_ok():
    parsed = parse_completion("<think>7+3=0 and then")
    assert parsed.mode == "think" and not parsed.closed and parsed.answer == ""


def test_leading_whitespace_tolerated_and_custom_tokens():
    tokens = ControlTokens(short="[S]", think="[T]", think_end="[/T]")
    assert parse_completion("  [T]x[/T]y", tokens).answer == "y"
    assert parse_completion("[S] 3", tokens).mode == "short"
    with pytest.raises(ValueError):
        format_completion("ponder", "1")


R1_TEMPLATE = ("{% for m in messages %}{{ '<|User|>' + m['content'] }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|Assistant|><think>\\n' }}{% endif %}")


def test_forced_thinking_opener_is_neutralised():
    from jinja2 import Template

    with pytest.warns(UserWarning, match="forced a thinking opener"):
        fixed = neutralise_chat_template(R1_TEMPLATE)
    rendered = Template(fixed).render(messages=[{"content": "1+1"}], add_generation_prompt=True)
    assert rendered == "<|User|>1+1<|Assistant|>"
    # A template that only mentions <think> inside the conversation is left alone.
    history = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert neutralise_chat_template(history) == history


def test_format_prompt_uses_the_chat_template_and_forces_modes(tiny_model_dir):
    from transformers import AutoTokenizer

    from thinkless_lite.config import ModelConfig
    from thinkless_lite.vocabulary import prepare_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.warns(UserWarning):
        prepare_tokenizer(tokenizer, ModelConfig())
    prompt = format_prompt(tokenizer, "7+3", system_prompt="be brief")
    assert prompt == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n7+3<|im_end|>\n<|im_start|>assistant\n"
    assert format_prompt(tokenizer, "7+3", mode="short").endswith("assistant\n<short>")
    assert format_prompt(tokenizer, "7+3", mode="think").endswith("assistant\n<think>")
