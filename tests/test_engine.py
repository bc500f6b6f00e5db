"""ThinklessEngine on the random tiny model: event order, validation, locking, compare, rendering."""

from __future__ import annotations

import threading
import time

import pytest

from thinkless_lite.config import ModelConfig, RunConfig
from thinkless_lite.demo.render import render_answer
from thinkless_lite.demo_engine import ThinklessEngine
from thinkless_lite.generation import Generation, decide
from thinkless_lite.tokens import format_prompt


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> ThinklessEngine:
    cfg = RunConfig(model=ModelConfig(name_or_path=str(tiny_model_dir), backend="hf"))
    cfg.demo.max_input_chars = 40
    cfg.demo.max_new_tokens = 24
    return ThinklessEngine.from_config(cfg)


def p_think_of(engine: ThinklessEngine, question: str) -> float:
    """P(think) of the engine's model for a question, read straight from the decision step."""
    prompt = format_prompt(engine.tokenizer, question, engine.system_prompt, tokens=engine.tokens)
    return decide(engine.model, engine.tokenizer, [prompt], tokens=engine.tokens)[2][0]


def test_from_config_uses_demo_limits(engine, tiny_model_dir):
    assert engine.max_input_chars == 40
    assert engine.max_new_tokens == 24
    assert str(tiny_model_dir) in engine.describe()
    assert not engine.lock.locked()


@pytest.mark.parametrize("mode", ["auto", "think", "short"])
def test_stream_yields_decision_then_text_then_done(engine, mode):
    events = list(engine.stream("7+3*2-5", mode=mode, max_new_tokens=16))
    kinds = [e.kind for e in events]
    assert kinds[0] == "decision"
    assert kinds[-1] == "done"
    assert set(kinds[1:-1]) <= {"text"}
    assert kinds.count("decision") == 1 and kinds.count("done") == 1
    decision, done = events[0], events[-1]
    assert decision.p_think == pytest.approx(p_think_of(engine, "7+3*2-5"), abs=1e-6)
    if mode != "auto":
        assert decision.mode == mode
    generation = done.generation
    assert isinstance(generation, Generation)
    assert (generation.mode, generation.p_think) == (decision.mode, pytest.approx(decision.p_think))
    if decision.mode is not None:               # auto, on a random model, may choose no control token at all
        assert generation.completion.startswith(f"<{decision.mode}>")
    assert 1 <= generation.num_tokens <= 16
    # The completion is exactly the decision text followed by the streamed pieces.
    assert generation.completion == "".join(e.text for e in events[:-1])
    assert not engine.lock.locked()


def test_forced_modes_and_threshold(engine):
    assert engine.answer("3+4", mode="think", max_new_tokens=8).mode == "think"
    assert engine.answer("3+4", mode="short", max_new_tokens=8).mode == "short"
    assert engine.answer("3+4", tau=0.0, max_new_tokens=8).mode == "think"      # P(think) >= 0 always
    p = p_think_of(engine, "3+4")
    assert p < 1.0                                                              # a random model is never sure
    above = engine.answer("3+4", tau=min(1.0, p + 1e-3), max_new_tokens=8)
    assert (above.mode, above.requested) == ("short", f"tau={min(1.0, p + 1e-3):g}")  # routed short: P(think) < tau
    assert engine.answer("3+4", tau=max(0.0, p - 1e-3), max_new_tokens=8).mode == "think"


@pytest.mark.parametrize("question, message", [
    ("", "empty"),
    ("   \n ", "empty"),
    (None, "empty"),
    ("1+" * 30, "limit is 40 characters"),
])
def test_input_validation(engine, question, message):
    with pytest.raises(ValueError, match=message):
        engine.stream(question)
    with pytest.raises(ValueError, match=message):
        engine.answer(question)
    assert not engine.lock.locked()


def test_limit_counts_the_stripped_question(engine):
    assert engine.answer("  " + "1" * 40 + "  ", mode="short", max_new_tokens=2).question == "1" * 40


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "sometimes"}, "mode must be one of"),
    ({"tau": 1.5}, "tau must be a number within 0..1"),
    ({"tau": "high"}, "tau must be a number"),
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
])
def test_bad_settings_are_refused(engine, kwargs, message):
    with pytest.raises(ValueError, match=message):
        engine.stream("3+4", **kwargs)


def test_compare_shape(engine):
    result = engine.compare("8-3*4+1", mode="short", max_new_tokens=12)
    assert set(result) >= {"question", "chosen", "think", "tokens_saved", "saved_fraction", "same_answer"}
    assert result["chosen"].mode == "short"
    assert result["think"].mode == "think"
    assert result["think"].requested == "think"
    assert result["tokens_saved"] == result["think"].num_tokens - result["chosen"].num_tokens
    assert isinstance(result["same_answer"], bool)


def test_compare_reuses_a_greedy_think_answer(engine):
    result = engine.compare("8-3*4+1", mode="think", max_new_tokens=12)
    assert result["tokens_saved"] == 0
    assert result["think"].completion == result["chosen"].completion


def test_requests_do_not_interleave(engine):
    """A second stream waits for the first to finish instead of sharing the model."""
    first = engine.stream("1+1", mode="think", max_new_tokens=12)
    next(first)                                  # decision made: the first request holds the model
    assert engine.lock.locked()
    order: list[str] = []

    def second():
        engine.answer("2+2", mode="short", max_new_tokens=4)
        order.append("second")

    worker = threading.Thread(target=second)
    worker.start()
    time.sleep(0.3)
    assert order == []                           # still waiting for the lock
    for _ in first:
        pass
    worker.join(timeout=30)
    assert order == ["second"]
    assert not engine.lock.locked()


def test_abandoned_stream_frees_the_model(engine):
    events = engine.stream("9*7", mode="think", max_new_tokens=20)
    next(events)
    events.close()                               # a closed tab / Stop button
    deadline = time.time() + 30
    while engine.lock.locked() and time.time() < deadline:
        time.sleep(0.05)
    assert not engine.lock.locked()
    assert engine.answer("3+4", mode="short", max_new_tokens=4).mode == "short"


@pytest.mark.parametrize("text, expected", [
    ("7", "7"),
    ("  42 \n", "42"),
    ("", ""),
    (None, ""),
    (r"The answer is \(x^2\).", r"The answer is $x^2$."),
    (r"\[ \frac{1}{2} \]", r"$$\frac{1}{2}$$"),
    (r"So \boxed{7}.", r"So $\boxed{7}$."),
    (r"$\boxed{7}$ stays", r"$\boxed{7}$ stays"),
    (r"$$\frac{a}{b}$$ and \boxed{\frac{1}{2}}", r"$$\frac{a}{b}$$ and $\boxed{\frac{1}{2}}$"),
    ("7+3*2-5", r"7+3\*2-5"),                       # not *emphasis* in Markdown
    (r"$3*2$ and **bold**", r"$3*2$ and **bold**"),  # math and real emphasis untouched
])
def test_render_answer(text, expected):
    assert render_answer(text) == expected
