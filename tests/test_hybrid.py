"""Warm-up data (thinkless_lite.data.hybrid): every source, the filters, the mix knob, teacher files read back."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from thinkless_lite.grading import grade_answer

from thinkless_lite.data.hybrid import (FilterReport, TeacherResponse, WarmupDataError, build_sft_examples,
                                        generated_responses, miniworld_responses, long_response,
                                        responses_from_columns, split_long_response)
from thinkless_lite.data.miniworld import MiniWorld, solve
from thinkless_lite.data.files import read_rows
from thinkless_lite.tokens import SHORT, THINK, ControlTokens, parse_completion


@pytest.fixture(scope="module")
def tokenizer():
    """The mini-world character tokenizer prepared as load_model prepares it (control tokens, neutral template)."""
    from thinkless_lite.config import ModelConfig
    from thinkless_lite.mini_base import build_tokenizer
    from thinkless_lite.vocabulary import prepare_tokenizer

    tok = build_tokenizer()
    with pytest.warns(UserWarning, match="forced a thinking opener"):
        prepare_tokenizer(tok, ModelConfig())
    return tok


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def think(question, answer, gold=None, reasoning="step by step"):
    return TeacherResponse(question, THINK, reasoning, answer, gold)


def short(question, answer, gold=None):
    return TeacherResponse(question, SHORT, "", answer, gold)


# ---------------------------------------------------------------- miniworld source

def test_miniworld_source_gives_both_styles_per_question_with_right_golds():
    world = MiniWorld()
    responses = miniworld_responses(world, 12)
    assert len(responses) == 24
    by_question = {}
    for r in responses:
        by_question.setdefault(r.question, []).append(r)
        assert r.gold == str(solve(r.question))
        assert grade_answer(r.answer, r.gold)  # both exact teachers answer right
        assert r.difficulty == len(r.question) // 2
    for question, pair in by_question.items():
        assert Counter(r.mode for r in pair) == Counter({THINK: len(pair) // 2, SHORT: len(pair) // 2})
        long_one = next(r for r in pair if r.mode == THINK)
        assert question in long_one.reasoning and long_one.reasoning.strip()
        assert next(r for r in pair if r.mode == SHORT).reasoning == ""
    # deterministic, and a different seed_offset draws other questions
    assert miniworld_responses(MiniWorld(), 12) == responses
    assert [r.question for r in miniworld_responses(world, 12, seed_offset=1)] != [r.question for r in responses]


def test_miniworld_source_builds_examples_that_parse_back(tokenizer):
    examples, report = build_sft_examples(miniworld_responses(MiniWorld(), 10), tokenizer, num_examples=20,
                                          short_share=0.5, require_correct=True)
    assert report.candidates == 20 and sum(report.dropped.values()) == 0
    assert Counter(e["mode"] for e in examples) == Counter({SHORT: 10, THINK: 10})
    for e in examples:
        parsed = parse_completion(e["completion"])
        assert parsed.mode == e["mode"] and parsed.format_ok and grade_answer(parsed.answer, e["gold"])
        assert e["prompt"].endswith("assistant\n")  # the control token belongs to the completion
        assert e["question"] in e["prompt"]


# ---------------------------------------------------------------- paired source

def test_paired_two_columns_from_a_jsonl_file(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"problem": "2+3", "solution": "5", "r1": "<think>\n2+3 is 5.\n</think>\nThe answer is \\boxed{5}.",
         "instruct": "\\boxed{5}"},
        {"problem": "4*2", "solution": "8", "r1": "4 times 2 is 8.</think> \\boxed{8}", "instruct": "8"},
        {"problem": "9-1", "solution": "8", "r1": "<think>never closes", "instruct": None},
    ])
    rows = read_rows(path)
    responses = responses_from_columns(rows, question_column="problem", answer_column="solution",
                                       long_column="r1", short_column="instruct")
    assert [(r.question, r.mode) for r in responses] == [
        ("2+3", THINK), ("2+3", SHORT), ("4*2", THINK), ("4*2", SHORT), ("9-1", THINK)]
    assert responses[0].reasoning == "2+3 is 5." and responses[0].answer == "The answer is \\boxed{5}."
    assert responses[2].reasoning == "4 times 2 is 8." and responses[2].answer == "\\boxed{8}"
    assert responses[3].answer == "8" and responses[3].gold == "8"
    assert responses[4].answer == "" and responses[4].answer_extracted  # no </think>, no answer: dropped, counted
    examples, report = build_sft_examples(responses, tokenizer, num_examples=10, short_share=0.5,
                                          require_correct=True)
    assert report.dropped == Counter({"think: no </think> and no answer in the text": 1})
    assert report.kept == Counter({SHORT: 2, THINK: 2})
    completions = {e["completion"] for e in examples}
    assert "<think>2+3 is 5.</think>The answer is \\boxed{5}." in completions
    assert "<short>8" in completions


def test_paired_one_response_column_with_control_tokens(tmp_path, tokenizer):
    """The paper's public warm-up data: instruction/output, the output starting with its control token."""
    path = write_jsonl(tmp_path / "warmup.jsonl", [
        {"instruction": "What is 2+3?", "output": "<think>\n2 plus 3 is 5.\n</think>\n\nThe answer is \\boxed{5}."},
        {"instruction": "What is 2+3?", "output": "<short>The answer is \\boxed{5}."},
        {"instruction": "What is 1+1?", "output": "The answer is \\boxed{2}."},  # no control token
        {"instruction": "What is 1+2?", "output": "<think>\nhmm, 1+2 is"},  # never closes its thought
        {"instruction": "", "output": "<short>\\boxed{1}"},  # no question: skipped
    ])
    responses = responses_from_columns(read_rows(path), question_column="instruction", answer_column=None,
                                       response_column="output")
    assert [r.mode for r in responses] == [THINK, SHORT, "", THINK]
    assert responses[0].reasoning == "2 plus 3 is 5." and responses[0].answer == "The answer is \\boxed{5}."
    assert responses[1].answer == "The answer is \\boxed{5}."
    assert all(r.gold is None for r in responses)
    examples, report = build_sft_examples(responses, tokenizer, num_examples=4, short_share=0.5)
    assert report.candidates == 4
    assert report.dropped == Counter({"no control token": 1, "think: no parsable answer": 1})
    assert sorted(e["mode"] for e in examples) == [SHORT, THINK]


def test_bad_column_mapping_names_the_key_and_lists_the_columns(tmp_path):
    rows = read_rows(write_jsonl(tmp_path / "w.jsonl", [{"instruction": "1+1", "output": "<short>2"}]))
    with pytest.raises(WarmupDataError) as err:
        responses_from_columns(rows, question_column="question", answer_column=None, response_column="output")
    message = str(err.value)
    assert "warmup.data.question_column='question'" in message
    assert "instruction, output" in message  # the available columns, so the fix is obvious
    with pytest.raises(WarmupDataError, match=r"warmup\.data\.short_column='short'.*the data has: instruction, output"):
        responses_from_columns(rows, question_column="instruction", answer_column=None, long_column="output",
                               short_column="short")
    # the default answer_column ("answer") is checked too
    with pytest.raises(WarmupDataError, match=r"warmup\.data\.answer_column='answer'"):
        responses_from_columns(rows, question_column="instruction", answer_column="answer", response_column="output")


def test_no_columns_configured_or_no_rows_is_a_clear_error():
    rows = [{"question": "1+1", "answer": "2"}]
    with pytest.raises(WarmupDataError, match="long_column and/or short_column.*response_column"):
        responses_from_columns(rows, question_column="question", answer_column="answer")
    with pytest.raises(WarmupDataError, match="no rows"):
        responses_from_columns([], question_column="question", answer_column="answer", response_column="x")


# ---------------------------------------------------------------- split_long_response

def test_split_long_response():
    assert split_long_response("<think>\nfirst 1+1=2\n</think>\nSo \\boxed{2}\n") == ("first 1+1=2", "So \\boxed{2}")
    # R1-style templates put <think> in the prompt: the output starts inside the thought
    assert split_long_response("Okay, 1+1=2.\n</think>\n\n**2**") == ("Okay, 1+1=2.", "**2**")
    assert split_long_response("  <think>a</think>b") == ("a", "b")
    assert split_long_response("<think>still thinking when the budget ran out") is None
    assert split_long_response("no thought markers at all") is None
    custom = ControlTokens("[S]", "[T]", "[/T]")
    assert split_long_response("[T]x[/T]y", custom) == ("x", "y")


# ---------------------------------------------------------------- filters and the mix

def test_unparsable_answers_are_dropped_and_counted(tokenizer):
    responses = [think("1+1", "The answer is 2."), think("2+2", ""), short("3+3", "no idea, sorry"),
                 short("4+4", "8"), TeacherResponse("5+5", "", "", "", None)]
    examples, report = build_sft_examples(responses, tokenizer, num_examples=10, short_share=0.5)
    assert report.candidates == 5
    assert report.dropped == Counter({"think: no parsable answer": 1, "short: no parsable answer": 1,
                                      "no control token": 1})
    assert {e["question"] for e in examples} == {"1+1", "4+4"}


def test_require_correct_drops_wrong_answers_and_needs_golds(tokenizer):
    responses = [think("1+1", "\\boxed{2}", "2"), think("2+2", "\\boxed{5}", "4"),
                 short("3+3", "6", "6"), short("4+4", "9", "8"), short("5+5", "10.0", "10")]
    examples, report = build_sft_examples(responses, tokenizer, num_examples=10, short_share=0.5,
                                          require_correct=True)
    assert report.dropped == Counter({"think: wrong answer": 1, "short: wrong answer": 1})
    assert {e["question"] for e in examples} == {"1+1", "3+3", "5+5"}
    # without the filter the wrong ones stay
    examples, _ = build_sft_examples(responses, tokenizer, num_examples=10, short_share=0.5)
    assert len(examples) == 5
    with pytest.raises(WarmupDataError, match="require_correct needs gold answers.*answer_column"):
        build_sft_examples([short("1+1", "2")], tokenizer, num_examples=1, short_share=0.5, require_correct=True)


def test_max_completion_tokens_drops_long_completions(tokenizer):
    # character tokenizer: "<think>" + reasoning + "</think>" + answer is 2 + len(reasoning) + len(answer) tokens
    responses = [think("1+1", "2", reasoning="x" * 5), think("2+2", "4", reasoning="x" * 50), short("3+3", "6")]
    examples, report = build_sft_examples(responses, tokenizer, num_examples=10, short_share=0.5,
                                          max_completion_tokens=8)
    assert report.dropped == Counter({"think: longer than 8 tokens": 1})
    assert {e["question"] for e in examples} == {"1+1", "3+3"}
    assert all(len(tokenizer(e["completion"], add_special_tokens=False)["input_ids"]) <= 8 for e in examples)


def pools(n_think, n_short):
    return ([think(f"t{i}", str(i % 10)) for i in range(n_think)]
            + [short(f"s{i}", str(i % 10)) for i in range(n_short)])


@pytest.mark.parametrize("share, want", [(0.0, (0, 10)), (0.5, (5, 5)), (1.0, (10, 0)), (0.3, (3, 7))])
def test_short_share_gives_the_requested_counts(tokenizer, share, want):
    examples, report = build_sft_examples(pools(20, 20), tokenizer, num_examples=10, short_share=share, seed=3)
    counts = Counter(e["mode"] for e in examples)
    assert (counts[SHORT], counts[THINK]) == want
    assert (report.kept[SHORT], report.kept[THINK]) == want
    again, _ = build_sft_examples(pools(20, 20), tokenizer, num_examples=10, short_share=share, seed=3)
    assert again == examples  # same seed, same draw and order


@pytest.mark.parametrize("n_think, n_short, share, want", [
    (20, 2, 0.5, (2, 8)),   # short pool runs dry: think fills the gap
    (2, 20, 0.5, (8, 2)),   # think pool runs dry: short fills the gap
    (20, 2, 1.0, (2, 0)),   # short only: never topped up with think
    (2, 20, 0.0, (0, 2)),   # think only: never topped up with short
    (3, 4, 0.5, (4, 3)),    # both short: everything there is
])
def test_short_share_when_a_pool_runs_short(tokenizer, n_think, n_short, share, want):
    examples, report = build_sft_examples(pools(n_think, n_short), tokenizer, num_examples=10, short_share=share)
    counts = Counter(e["mode"] for e in examples)
    assert (counts[SHORT], counts[THINK]) == want
    assert len({e["question"] for e in examples}) == len(examples)  # drawn without replacement


def test_nothing_left_is_an_error_that_carries_the_report(tokenizer):
    responses = [think("1+1", "\\boxed{3}", "2"), short("2+2", "", "4")]
    with pytest.raises(WarmupDataError) as err:
        build_sft_examples(responses, tokenizer, num_examples=4, short_share=0.5, require_correct=True)
    message = str(err.value)
    assert "asks for 2 short examples but no short response survived" in message
    assert "2 candidate responses" in message and "short: no parsable answer: 1" in message
    assert "warmup.data.short_share=0.0" in message  # the fix, when one style is meant
    # a mix that asks only for a style the data does not have is also empty
    with pytest.raises(WarmupDataError, match="no short response survived"):
        build_sft_examples(pools(5, 0), tokenizer, num_examples=4, short_share=1.0)


def test_filter_report_reads_well():
    report = FilterReport(candidates=10, kept=Counter({THINK: 4, SHORT: 3}),
                          dropped=Counter({"short: wrong answer": 2, "no control token": 1}))
    assert str(report) == ("10 candidate responses; kept 7 (short: 3, think: 4); "
                           "dropped (no control token: 1, short: wrong answer: 2)")
    assert str(FilterReport()) == "0 candidate responses; kept 0 (none); dropped (none)"


def test_generated_responses_from_a_hand_written_file(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join([
        json.dumps({"index": 0, "role": "long", "response": "1+2=3\n</think>\nSo \\boxed{3}"}),
        json.dumps({"index": 0, "role": "short", "response": " 3 \n"}),
        json.dumps({"index": 1, "role": "long", "response": "<think>no end"}),
        json.dumps({"index": 0, "role": "short", "response": "duplicate, ignored"}),
        json.dumps({"index": 7, "role": "short", "response": "a question this run does not use"}),
        '{"index": 1, "role": "sho',  # torn
    ]), encoding="utf-8")
    responses = generated_responses(["1+2", "3*4"], ["3", None], path)
    assert responses == [TeacherResponse("1+2", THINK, "1+2=3", "So \\boxed{3}", "3"),
                         TeacherResponse("1+2", SHORT, "", "3", "3"),
                         TeacherResponse("3*4", THINK, "no end", "", None, answer_extracted=True)]
    assert generated_responses(["1+2"], [None], tmp_path / "missing.jsonl") == []


def test_a_teacher_file_written_for_other_questions_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"index": 0, "role": "short", "question": "1+2", "response": "3"}])
    with pytest.raises(WarmupDataError, match=re.escape("written for other questions")):
        generated_responses(["9*9"], [None], path)


def test_a_long_answer_without_think_end_is_reasoning_with_its_answer_extracted(tokenizer):
    """GSM8K's own solutions (or an instruction model as the reasoning teacher): no </think> anywhere."""
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether she sold 48+24 = <<48+24=72>>72.\n#### 72"
    response = long_response("How many clips?", solution, "72")
    assert response.mode == THINK and response.answer_extracted
    assert response.reasoning == solution and response.answer == "The answer is $\\boxed{72}$."
    examples, report = build_sft_examples([response, short("How many clips?", "72", "72")], tokenizer,
                                          num_examples=2, short_share=0.5, require_correct=True)
    assert sorted(e["mode"] for e in examples) == [SHORT, THINK]
    think_example = next(e for e in examples if e["mode"] == THINK)
    assert think_example["completion"] == f"<think>{solution}</think>The answer is $\\boxed{{72}}$."
    assert "answer extracted: 1" in str(report)
    assert long_response("q", "\\boxed{5}", None).answer == ""  # an answer alone is no reasoning


def test_cut_off_teacher_answers_are_dropped_and_a_partial_shortfall_is_reported(tokenizer):
    responses = [think(f"{i}+1", f"\\boxed{{{i + 1}}}", str(i + 1)) for i in range(4)]
    responses += [TeacherResponse(f"{i}+2", SHORT, "", str(i + 2), str(i + 2), truncated=i > 0) for i in range(4)]
    examples, report = build_sft_examples(responses, tokenizer, num_examples=4, short_share=0.5)
    assert report.dropped == Counter({"short: cut off by the teacher's token budget": 3})
    assert Counter(e["mode"] for e in examples) == Counter({THINK: 3, SHORT: 1})
    assert "SHORTFALL: asked for 2 short + 2 think, got 1 + 3" in str(report)


def test_only_as_many_candidates_are_checked_as_the_mix_needs(tokenizer):
    calls = []

    class CountingTokenizer:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, text, **kwargs):
            calls.append(text)
            return self.inner(text, **kwargs)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    responses = [think(f"{i}+1", f"\\boxed{{{i}}}", None) for i in range(500)]
    responses += [short(f"{i}+2", str(i), None) for i in range(500)]
    examples, _ = build_sft_examples(responses, CountingTokenizer(tokenizer), num_examples=10, short_share=0.5,
                                     max_completion_tokens=10_000)
    assert len(examples) == 10 and len(calls) <= 12
