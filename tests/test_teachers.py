"""Teacher models run here (thinkless_lite.teachers): batched, resumable, prompts as the teacher expects them."""

from __future__ import annotations

import json

import pytest

from thinkless_lite.data.hybrid import WarmupDataError, generated_responses, long_response, read_teacher_file
from thinkless_lite.data.miniworld import solve
from thinkless_lite.teachers import generate_teacher_file
from thinkless_lite.tokens import SHORT, THINK

QUESTIONS = ["1+2", "3*4", "9-5", "7+7", "2*3-1"]


class GenerateSpy:
    """Wraps AutoModelForCausalLM.from_pretrained: counts model loads and generate() batches."""

    def __init__(self, monkeypatch):
        from transformers import AutoModelForCausalLM

        self.loads = 0
        self.batches: list[int] = []
        original = AutoModelForCausalLM.from_pretrained

        def from_pretrained(*args, **kwargs):
            self.loads += 1
            model = original(*args, **kwargs)
            generate = model.generate

            def counting_generate(*g_args, **g_kwargs):
                self.batches.append(int(g_kwargs["input_ids"].shape[0]))
                return generate(*g_args, **g_kwargs)

            model.generate = counting_generate
            return model

        monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)


def lines_by_key(path):
    return {(row["index"], row["role"]): row for row in read_teacher_file(path)}


def test_generate_teacher_file_with_tiny_models_and_resume(tiny_model_dir, tmp_path, monkeypatch):
    spy = GenerateSpy(monkeypatch)
    target = tmp_path / "teachers" / "responses.jsonl"
    kwargs = dict(batch_size=2, max_new_tokens=8, progress=False)
    generate_teacher_file(str(tiny_model_dir), QUESTIONS, target, role="long", **kwargs)
    generate_teacher_file(str(tiny_model_dir), QUESTIONS, target, role="short", **kwargs)
    assert spy.loads == 2 and spy.batches == [2, 2, 1, 2, 2, 1]
    lines = target.read_text().splitlines()
    assert len(lines) == 2 * len(QUESTIONS)
    first = lines_by_key(target)
    assert set(first) == {(i, role) for i in range(len(QUESTIONS)) for role in ("long", "short")}
    assert all(row["question"] == QUESTIONS[row["index"]] for row in first.values())

    # Simulate a kill: the last two complete lines are lost and a half-written line is left behind.
    kept = lines[:-2]
    target.write_text("\n".join(kept) + "\n" + lines[-2][: len(lines[-2]) // 2], encoding="utf-8")
    missing = {(json.loads(line)["index"], json.loads(line)["role"]) for line in lines[-2:]}
    assert missing == {(3, "short"), (4, "short")}
    spy.loads, spy.batches = 0, []
    generate_teacher_file(str(tiny_model_dir), QUESTIONS, target, role="long", **kwargs)
    assert spy.loads == 0  # nothing to do for this teacher: the model is not even loaded
    generate_teacher_file(str(tiny_model_dir), QUESTIONS, target, role="short", **kwargs)
    assert spy.loads == 1 and spy.batches == [2]  # only the two missing indices, in one batch
    text = target.read_text()
    assert text.endswith("\n")
    rows = [json.loads(line) for line in text.splitlines()]  # every line is whole again: the torn one is gone
    assert len(rows) == 2 * len(QUESTIONS)
    again = lines_by_key(target)
    assert again == first  # greedy decoding: the regenerated lines equal the lost ones

    # everything done: no model load at all, the file is untouched
    def no_load(*args, **kwargs):
        raise AssertionError("the teacher model was loaded although every response is on file")

    from transformers import AutoModelForCausalLM
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_load)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", no_load)
    for role in ("long", "short"):
        generate_teacher_file("no/such-model", QUESTIONS, target, role=role, **kwargs)
    assert target.read_text() == text

    # generated_responses maps lines back to questions, golds and styles
    golds = [str(solve(q)) for q in QUESTIONS]
    responses = generated_responses(QUESTIONS, golds, target)
    assert len(responses) == 2 * len(QUESTIONS)
    for r in responses:
        i = QUESTIONS.index(r.question)
        assert r.gold == golds[i]
        raw = again[(i, "long" if r.mode == THINK else "short")]["response"]
        if r.mode == SHORT:
            assert r.reasoning == "" and r.answer == raw.strip()
        else:
            assert r == long_response(QUESTIONS[i], raw, golds[i], truncated=r.truncated)
        assert r.truncated == again[(i, "long" if r.mode == THINK else "short")]["truncated"]


def test_generate_rejects_a_bad_role(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="role must be 'long' or 'short'"):
        generate_teacher_file(str(tiny_model_dir), QUESTIONS, tmp_path / "x.jsonl", role="medium")

def test_a_teacher_file_written_for_other_questions_is_refused_before_any_model_loads(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"index": 0, "role": "short", "question": "1+2", "response": "3"}) + "\n")
    with pytest.raises(WarmupDataError, match="generated_file"):
        generate_teacher_file("no/such-model", ["9*9"], path, role="short", progress=False)


def test_the_short_teacher_is_asked_to_answer_directly_and_cut_offs_are_recorded(mini_base_dir, tmp_path, monkeypatch):
    """The student's examples keep the bare question; a teacher stopped by its budget is marked truncated."""
    from transformers import AutoTokenizer

    seen = []
    original = AutoTokenizer.from_pretrained

    def recording(*args, **kwargs):
        tokenizer = original(*args, **kwargs)
        template = tokenizer.apply_chat_template

        def apply(messages, **kw):
            seen.append(messages[-1]["content"])
            return template(messages, **kw)

        tokenizer.apply_chat_template = apply
        return tokenizer

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", recording)
    target = tmp_path / "t.jsonl"
    questions = ["1+2", "3*4-5+6*7-8"]
    generate_teacher_file(str(mini_base_dir), questions, target, role="short", max_new_tokens=4,
                          instruction="Answer directly.", progress=False)
    assert seen == ["1+2\n\nAnswer directly.", "3*4-5+6*7-8\n\nAnswer directly."]
    generate_teacher_file(str(mini_base_dir), questions, target, role="long", max_new_tokens=72, progress=False)
    assert seen[2:] == questions  # the long teacher gets the bare question
    rows = read_teacher_file(target)
    assert [row["question"] for row in rows] == questions * 2
    # The base thinks on every question: k=1 (~61 tokens) ends within 72, k=6 (~101) is cut off.
    assert [row["truncated"] for row in rows if row["role"] == "long"] == [False, True]
    responses = generated_responses(questions, ["3", "3"], target)
    assert [(r.mode, r.truncated) for r in responses if r.mode == THINK] == [(THINK, False), (THINK, True)]
