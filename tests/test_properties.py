"""Properties over arbitrary text: nothing raises, and the reward orders outcomes as the paper intends."""

from contextlib import contextmanager
from fractions import Fraction
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from thinkless_lite import grading
from thinkless_lite.grading import extract_answer, grade_answer, normalise_answer
from thinkless_lite.rewards import RewardTable, score_completion, thinkless_reward
from thinkless_lite.tokens import ControlTokens, parse_completion

FAST = settings(max_examples=150, deadline=None)
TOKENS = ControlTokens()

# Text that often looks like an answer: LaTeX fragments, digits, control tokens, answer phrases.
FRAGMENTS = st.sampled_from([
    "\\boxed{", "}", "{", "\\frac", "\\text{", "$", "####", "The answer is ", "answer:", ",", ".", "-",
    "x = ", "\\sqrt", "^", "\\circ", "%", "(", ")", "[", "]", "\\!", " ", "\n", "<short>", "<think>",
    "</think>", "0", "7", "025", "1,600", "3.50", "\\infty", "\\$", "\\fbox",
])
MATHY_TEXT = st.lists(st.one_of(FRAGMENTS, st.text(max_size=5)), max_size=25).map("".join)
ANY_TEXT = st.one_of(st.text(max_size=300), MATHY_TEXT)


@contextmanager
def fast_path_only():
    """Grade without the symbolic worker: these properties are about the pure-Python layers."""
    with mock.patch.object(grading, "symbolic_equal", return_value=False):
        yield


def _plain_text(text: str) -> str:
    """Free text that cannot be mistaken for structure (no control tokens, no answer markers)."""
    for marker in ("<short>", "<think>", "</think>", "\\boxed", "\\fbox", "####", "answer", "Answer"):
        text = text.replace(marker, "")
    return text


NUMBERS = st.one_of(
    st.integers(-10**9, 10**9).map(str),
    st.fractions(max_denominator=50).map(lambda f: f"\\frac{{{f.numerator}}}{{{f.denominator}}}"
                                         if f.denominator != 1 else str(f.numerator)),
    st.decimals(-1000, 1000, places=3, allow_nan=False, allow_infinity=False).map(str),
)


@FAST
@given(ANY_TEXT)
def test_parse_completion_never_raises(text):
    parsed = parse_completion(text, TOKENS)
    assert parsed.mode in (None, "short", "think")
    assert parsed.format_ok == (parsed.mode is not None and parsed.closed)


@FAST
@given(ANY_TEXT)
def test_extract_answer_never_raises_and_is_normalised(text):
    answer = extract_answer(text)
    assert answer is None or (isinstance(answer, str) and answer)


@FAST
@given(ANY_TEXT)
def test_normalise_answer_is_idempotent(text):
    once = normalise_answer(text)
    assert normalise_answer(once) == once


@FAST
@given(NUMBERS, st.sampled_from(["The answer is {}.", "\\boxed{{{}}}", "#### {}", "so we get {} apples", "{}"]))
def test_extracting_an_extracted_answer_changes_nothing(answer, template):
    once = extract_answer(template.format(answer))
    assert once is not None and extract_answer(once) == once


@FAST
@given(ANY_TEXT, ANY_TEXT)
def test_grade_answer_never_raises(response, gold):
    with fast_path_only():
        assert grade_answer(response, gold) in (True, False)
        assert grade_answer(gold, gold) in (True, False)


@settings(max_examples=15, deadline=None)
@given(MATHY_TEXT, MATHY_TEXT)
def test_grade_answer_with_the_symbolic_worker_never_raises(response, gold):
    assert grade_answer(response, gold, timeout_s=2.0) in (True, False)


@FAST
@given(ANY_TEXT, ANY_TEXT)
def test_thinkless_reward_never_raises_and_stays_in_the_table(completion, gold):
    table = RewardTable()
    with fast_path_only():
        scored = score_completion(completion, gold, table)
    assert scored.reward in {table.short_correct, table.think_correct, table.short_wrong,
                             table.think_wrong, table.format_error}
    assert not (scored.correct and scored.format_error)


@FAST
@given(st.integers(-10**12, 10**12))
def test_number_formats_grade_equal(n):
    with fast_path_only():
        assert grade_answer(f"{n:,}", str(n))
        assert grade_answer(f"\\boxed{{{n}.0}}", f"{n:,}")
        assert grade_answer(f"#### {n}", f"0{n}" if n >= 0 else str(n))
        assert not grade_answer(str(n + 1), str(n))


@FAST
@given(NUMBERS, NUMBERS)
def test_numbers_grade_by_value(a, b):
    def value(s: str) -> Fraction:
        if s.startswith("\\frac"):
            num, den = s[6:-1].split("}{")
            return Fraction(int(num), int(den))
        return Fraction(s)

    with fast_path_only():
        assert grade_answer(f"The answer is {a}.", a)
        if value(a) != value(b) and round(value(a), 6) != round(value(b), 6):
            assert not grade_answer(f"The answer is {a}.", b)


@FAST
@given(NUMBERS, st.text(max_size=200))
def test_correct_short_never_scores_below_correct_think(answer, reasoning):
    reasoning = _plain_text(reasoning)
    with fast_path_only():
        short = thinkless_reward(f"<short>The answer is {answer}.", answer)
        think = thinkless_reward(f"<think>{reasoning}</think>The answer is \\boxed{{{answer}}}.", answer)
    assert short == 1.0 and think == 0.5
    assert short >= think


@FAST
@given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6), st.sampled_from(["short", "think"]),
       st.text(max_size=200))
def test_wrong_never_scores_above_correct_in_the_same_mode(gold, other, mode, reasoning):
    reasoning = _plain_text(reasoning)

    def completion(answer: int) -> str:
        if mode == "short":
            return f"<short>\\boxed{{{answer}}}"
        return f"<think>{reasoning}</think>So it is {answer}."

    with fast_path_only():
        right = score_completion(completion(gold), str(gold))
        wrong = score_completion(completion(other), str(gold))
    assert right.correct and not right.format_error
    assert wrong.correct == (other == gold)
    assert wrong.reward <= right.reward


@FAST
@given(st.builds(RewardTable, *[st.floats(-5, 5, allow_nan=False)] * 5), ANY_TEXT)
def test_format_errors_score_the_table_value(table, text):
    text = _plain_text(text)  # no control token can appear
    with fast_path_only():
        scored = score_completion(text, "1", table)
    assert scored.format_error and scored.reward == table.format_error and scored.mode is None
