"""Warm-up data: (question, long answer, short answer) rows -> SFT examples behind control tokens.

Stage 1 of the paper distils two teachers into one model: a reasoning model's long answer after
``<think>`` and an instruction model's short answer after ``<short>``. Sources:

* ``miniworld``  the two exact mini-world teachers;
* ``paired``     a hub dataset or local file with a long and a short column, or one response column
                 whose text already starts with a control token (the paper's public warm-up data);
* ``generate``   two teacher models the user names, run by :mod:`thinkless_lite.teachers` (batched,
                 resumable JSONL) and read back here.

Every source becomes :class:`TeacherResponse` rows; one builder filters and mixes them.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from thinkless_lite.data.miniworld import MiniWorld
from thinkless_lite.jsonl import read_jsonl
from thinkless_lite.settings import MiniWorldConfig
from thinkless_lite.tokens import SHORT, THINK, ControlTokens, format_completion, format_prompt, parse_completion

log = logging.getLogger("thinkless_lite")


class WarmupDataError(ValueError):
    """Warm-up data that cannot be used as configured; the message names the fix."""


@dataclass(frozen=True)
class TeacherResponse:
    """One teacher answer to one question. ``reasoning`` is empty for short answers.

    ``truncated``: the teacher hit its token budget before it finished (such answers are dropped).
    ``answer_extracted``: a long answer had no ``</think>``; its final answer was read from the text.
    """

    question: str
    mode: str
    reasoning: str
    answer: str
    gold: str | None = None
    difficulty: int | None = None
    truncated: bool = False
    answer_extracted: bool = False


@dataclass
class FilterReport:
    """What the builder kept, why it dropped the rest, and where the mix falls short of the asked share."""

    candidates: int = 0
    kept: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    shortfall: str = ""

    def __str__(self) -> str:
        kept = ", ".join(f"{m}: {n}" for m, n in sorted(self.kept.items())) or "none"
        dropped = ", ".join(f"{why}: {n}" for why, n in sorted(self.dropped.items())) or "none"
        text = f"{self.candidates} candidate responses; kept {sum(self.kept.values())} ({kept}); dropped ({dropped})"
        if self.notes:
            text += "; " + ", ".join(f"{why}: {n}" for why, n in sorted(self.notes.items()))
        return text + (f"; SHORTFALL: {self.shortfall}" if self.shortfall else "")


def split_long_response(text: str, tokens: ControlTokens = ControlTokens()) -> tuple[str, str] | None:
    """A reasoning model's raw output -> (reasoning, final part); None when it never closes its thought.

    Accepts outputs with or without the leading ``<think>`` (R1-style templates put it in the prompt).
    """
    body = text.strip()
    if body.startswith(tokens.think):
        body = body[len(tokens.think):]
    reasoning, sep, final = body.partition(tokens.think_end)
    if not sep:
        return None
    return reasoning.strip("\n"), final.strip()


def long_response(question: str, text: str, gold: str | None, tokens: ControlTokens = ControlTokens(),
                  difficulty=None, truncated: bool = False) -> TeacherResponse:
    """A long answer as a think example. With ``</think>`` it splits there; without one (a worked solution
    such as GSM8K's, or an instruction model used as the reasoning teacher) the whole text is the
    reasoning and the answer after ``</think>`` is its final answer, extracted by the grader's own rules
    and written as ``The answer is $\\boxed{..}$.`` (no answer in the text: the example is dropped, counted).
    """
    from thinkless_lite.grading import extract_answer, is_bare_answer

    split = split_long_response(text, tokens)
    if split is not None:
        return TeacherResponse(question, THINK, split[0], split[1], gold, difficulty, truncated)
    reasoning = text.strip()
    if reasoning.startswith(tokens.think):
        reasoning = reasoning[len(tokens.think):].strip("\n")
    final = None if is_bare_answer(reasoning) else extract_answer(reasoning)  # an answer alone is no reasoning
    answer = f"The answer is $\\boxed{{{final}}}$." if final is not None else ""
    return TeacherResponse(question, THINK, reasoning, answer, gold, difficulty, truncated, answer_extracted=True)


# ---------------------------------------------------------------- sources -> teacher responses

def responses_from_columns(rows: Sequence[dict], *, question_column: str, answer_column: str | None,
                           long_column: str | None = None, short_column: str | None = None,
                           response_column: str | None = None, tokens: ControlTokens = ControlTokens(),
                           difficulty_column: str | None = None) -> list[TeacherResponse]:
    """Map a paired dataset's columns to teacher responses (two columns, or one control-token column)."""
    if not rows:
        raise WarmupDataError("the paired dataset has no rows")
    if response_column is None and not (long_column or short_column):
        raise WarmupDataError("paired data needs warmup.data.long_column and/or short_column, "
                              "or warmup.data.response_column (text starting with a control token)")
    available = sorted(rows[0].keys())
    wanted = {"question_column": question_column, "answer_column": answer_column, "long_column": long_column,
              "short_column": short_column, "response_column": response_column}
    missing = {key: col for key, col in wanted.items() if col is not None and col not in rows[0]}
    if missing:
        listed = ", ".join(f"warmup.data.{key}={col!r}" for key, col in missing.items())
        raise WarmupDataError(f"column mapping names missing column(s): {listed}; the data has: {', '.join(available)}")
    out = []
    for row in rows:
        question = row.get(question_column)
        if not isinstance(question, str) or not question.strip():
            continue
        gold = row.get(answer_column) if answer_column else None
        gold = None if gold is None else str(gold)
        level = row.get(difficulty_column) if difficulty_column else None
        if response_column is not None:
            parsed = parse_completion(row.get(response_column), tokens)
            if parsed.mode is not None:
                out.append(TeacherResponse(question, parsed.mode, parsed.reasoning, parsed.answer if parsed.closed else "",
                                           gold, level))
            else:
                out.append(TeacherResponse(question, "", "", "", gold, level))  # counted as no control token
            continue
        if long_column and isinstance(row.get(long_column), str):
            out.append(long_response(question, row[long_column], gold, tokens, level))
        if short_column and isinstance(row.get(short_column), str):
            out.append(TeacherResponse(question, SHORT, "", row[short_column].strip(), gold, level))
    return out


def miniworld_responses(world: MiniWorldConfig, n_questions: int, seed_offset: int = 0) -> list[TeacherResponse]:
    """Both exact mini-world teachers answer ``n_questions`` training questions of ``world`` (a recipe's
    ``miniworld`` section or a :class:`MiniWorld`)."""
    world = MiniWorld.of(world)
    out = []
    for item in world.sample("train", n_questions, seed_offset=seed_offset):
        reasoning, answer = world.long_solution(item.question)
        out.append(TeacherResponse(item.question, THINK, reasoning, answer, item.gold, item.difficulty))
        out.append(TeacherResponse(item.question, SHORT, "", world.short_solution(item.question), item.gold,
                                   item.difficulty))
    return out


# ---------------------------------------------------------------- teacher files (written by thinkless_lite.teachers)

def check_questions(rows: Sequence[dict], questions: Sequence[str], path: str | Path) -> None:
    """Lines record their question: one that disagrees with ``questions`` means the file is another run's."""
    for row in rows:
        i = row["index"]
        if 0 <= i < len(questions) and "question" in row and row["question"] != questions[i]:
            raise WarmupDataError(
                f"{path}: the line for index {i} answers {row['question']!r}, but question {i} is now "
                f"{questions[i]!r}: the file was written for other questions. Delete it or set "
                f"warmup.data.generated_file to a new path.")


def read_teacher_file(path: str | Path) -> list[dict]:
    """Lines of a teacher JSONL that look like teacher answers; a torn last line is ignored."""
    return [row for row in read_jsonl(path)
            if isinstance(row, dict) and isinstance(row.get("index"), int) and isinstance(row.get("response"), str)
            and row.get("role") in ("long", "short")]


def generated_responses(questions: Sequence[str], golds: Sequence[str | None], teacher_file: str | Path,
                        tokens: ControlTokens = ControlTokens()) -> list[TeacherResponse]:
    """Teacher JSONL -> teacher responses (long ones split at ``</think>``).

    One response per (index, role), the first one written; indices beyond ``questions`` (a run with
    fewer questions sharing the file) are ignored. A line recorded for another question at its index
    means the file belongs to another question list: that raises :class:`WarmupDataError`.
    """
    rows = read_teacher_file(teacher_file)
    check_questions(rows, questions, teacher_file)
    out = []
    seen = set()
    for row in rows:
        i = row["index"]
        if not 0 <= i < len(questions) or (i, row["role"]) in seen:
            continue
        seen.add((i, row["role"]))
        truncated = bool(row.get("truncated", False))
        if row["role"] == "long":
            out.append(long_response(questions[i], row["response"], golds[i], tokens, truncated=truncated))
        else:
            out.append(TeacherResponse(questions[i], SHORT, "", row["response"].strip(), golds[i], truncated=truncated))
    return out


# ---------------------------------------------------------------- filter and mix

def build_sft_examples(responses: Iterable[TeacherResponse], tokenizer, *, num_examples: int, short_share: float,
                       seed: int = 0, max_completion_tokens: int | None = None, require_correct: bool = False,
                       tokens: ControlTokens = ControlTokens(), system_prompt: str | None = None,
                       ) -> tuple[list[dict], FilterReport]:
    """Filter teacher responses and mix them into ``{"prompt", "completion", "mode", ...}`` examples.

    Drops: no control token; cut off by the teacher's token budget; no parsable final answer; wrong
    answers (``require_correct``); completions over ``max_completion_tokens``. Wants
    ``round(short_share * num_examples)`` short examples and the rest think; when one style runs short
    the other fills the gap as far as it can, unless its share is 0 (``short_share`` 0.0 or 1.0 always
    gives one style only). A style the share asks for that has no example left at all is an error that
    says why; a partial shortfall is written into the report. Candidates are drawn in a seeded random
    order and checked only until enough are kept, so a 200k-row source costs what the mix needs.
    """
    from thinkless_lite.grading import extract_answer, grade_answer

    report = FilterReport()
    pools: dict[str, list[TeacherResponse]] = {THINK: [], SHORT: []}
    for response in responses:
        report.candidates += 1
        if response.mode not in (THINK, SHORT):
            report.dropped["no control token"] += 1
        else:
            pools[response.mode].append(response)
    if require_correct and any(r.gold is None for pool in pools.values() for r in pool):
        raise WarmupDataError("warmup.data.require_correct needs gold answers: set warmup.data.answer_column")

    def usable(response: TeacherResponse) -> dict | None:
        mode = response.mode
        if response.truncated:
            report.dropped[f"{mode}: cut off by the teacher's token budget"] += 1
            return None
        if not response.answer or extract_answer(response.answer) is None:
            why = "no </think> and no answer in the text" if response.answer_extracted else "no parsable answer"
            report.dropped[f"{mode}: {why}"] += 1
            return None
        if require_correct and not grade_answer(response.answer, response.gold):
            report.dropped[f"{mode}: wrong answer"] += 1
            return None
        completion = format_completion(mode, response.answer, response.reasoning, tokens)
        if max_completion_tokens is not None:
            if len(tokenizer(completion, add_special_tokens=False)["input_ids"]) > max_completion_tokens:
                report.dropped[f"{mode}: longer than {max_completion_tokens} tokens"] += 1
                return None
        if response.answer_extracted:
            report.notes["think: no </think>, whole text taken as reasoning, answer extracted"] += 1
        return {"prompt": format_prompt(tokenizer, response.question, system_prompt, tokens=tokens),
                "completion": completion, "mode": mode, "question": response.question, "gold": response.gold,
                "difficulty": response.difficulty}

    rng = random.Random(seed)
    candidates = {mode: iter(rng.sample(pool, len(pool))) for mode, pool in pools.items()}

    def draw(mode: str, count: int) -> list[dict]:
        taken = []
        for response in candidates[mode]:
            if len(taken) == count:
                break
            example = usable(response)
            if example is not None:
                taken.append(example)
        if len(taken) < count:  # the iterator may still hold one checked-out candidate
            for response in candidates[mode]:
                example = usable(response)
                if example is not None:
                    taken.append(example)
                    if len(taken) == count:
                        break
        return taken

    want = {SHORT: round(short_share * num_examples)}
    want[THINK] = num_examples - want[SHORT]
    chosen = {SHORT: draw(SHORT, want[SHORT]), THINK: draw(THINK, want[THINK])}
    for mode, other in ((SHORT, THINK), (THINK, SHORT)):  # a style that ran dry is filled in by the other
        gap = want[mode] - len(chosen[mode])
        if gap > 0 and want[other] > 0:
            chosen[other] += draw(other, gap)
    for mode in (SHORT, THINK):
        if want[mode] > 0 and not chosen[mode]:
            raise WarmupDataError(
                f"warm-up data: warmup.data.short_share={short_share} asks for {want[mode]} {mode} examples but no "
                f"{mode} response survived the filters: {report}. Check the {'short' if mode == SHORT else 'long'} "
                f"column/teacher (a long answer needs its final answer after </think> or somewhere in its text), "
                f"raise the teacher's max_new_tokens, or set warmup.data.short_share="
                f"{'0.0' if mode == SHORT else '1.0'} to train one style on purpose.")
    examples = chosen[SHORT] + chosen[THINK]
    rng.shuffle(examples)
    report.kept.update({SHORT: len(chosen[SHORT]), THINK: len(chosen[THINK])})
    if (len(chosen[SHORT]), len(chosen[THINK])) != (want[SHORT], want[THINK]):
        report.shortfall = (f"asked for {want[SHORT]} short + {want[THINK]} think, got {len(chosen[SHORT])} + "
                            f"{len(chosen[THINK])} (short share {len(chosen[SHORT]) / max(len(examples), 1):.0%} "
                            f"instead of {short_share:.0%})")
        log.warning("warm-up data: %s", report.shortfall)
    if not examples:
        raise WarmupDataError(f"no warm-up examples left after filtering: {report}")
    log.info("warm-up data: %s", report)
    return examples, report
