"""The Thinkless reward: correctness, with a bonus for getting it right without thinking.

Correct short answers earn more than correct thinking answers, so the policy learns to think
only when it must; a wrong answer or a malformed completion is penalised whichever mode it chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from thinkless_lite.grading import extract_answer, grade_answer
from thinkless_lite.settings import RewardTable
from thinkless_lite.tokens import SHORT, ControlTokens, parse_completion


@dataclass(frozen=True)
class ScoredCompletion:
    """The reward and why: the mode chosen (None if none), correctness, and format failure."""

    reward: float
    mode: str | None
    correct: bool
    format_error: bool


def score_completion(completion: str, gold: str, table: RewardTable = RewardTable(),
                     tokens: ControlTokens = ControlTokens()) -> ScoredCompletion:
    """Score one completion against its gold answer.

    Only the answer part is graded (after ``</think>`` or ``<short>``): a number the model
    wrote while reasoning must not count. A missing control token, an unclosed ``<think>``
    or an answer part with no answer in it is a format error.
    """
    parsed = parse_completion(completion, tokens)
    if not parsed.format_ok or extract_answer(parsed.answer) is None:
        return ScoredCompletion(table.format_error, parsed.mode, correct=False, format_error=True)
    correct = grade_answer(parsed.answer, gold)
    if parsed.mode == SHORT:
        reward = table.short_correct if correct else table.short_wrong
    else:
        reward = table.think_correct if correct else table.think_wrong
    return ScoredCompletion(reward, parsed.mode, correct=correct, format_error=False)


def thinkless_reward(completion: str, gold: str, table: RewardTable = RewardTable(),
                     tokens: ControlTokens = ControlTokens()) -> float:
    """The scalar reward of :func:`score_completion`."""
    return score_completion(completion, gold, table, tokens).reward


class ThinklessReward:
    """The reward as TRL calls it, ``f(completions, **dataset_columns) -> list[float]``, keeping each
    completion's :class:`ScoredCompletion` (``last_outcomes``) for the trainer's metrics.

    TRL passes every dataset column as a keyword list aligned with ``completions``; the golds are read
    from ``answer_column``. A conversational completion (a list of messages) is read from its last
    message's content.
    """

    __name__ = "thinkless_reward"

    def __init__(self, table: RewardTable = RewardTable(), tokens: ControlTokens = ControlTokens(),
                 answer_column: str = "answer"):
        self.table, self.tokens, self.answer_column = table, tokens, answer_column
        self.last_outcomes: list[ScoredCompletion] = []

    def __call__(self, completions: Sequence, **columns) -> list[float]:
        if self.answer_column not in columns:
            raise KeyError(f"the reward needs the dataset column {self.answer_column!r}; got {sorted(columns)}")
        golds = columns[self.answer_column]
        if len(golds) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
        texts = [c[-1].get("content") if isinstance(c, list) and c and isinstance(c[-1], dict) else c
                 for c in completions]
        self.last_outcomes = [score_completion(t, str(g), self.table, self.tokens) for t, g in zip(texts, golds)]
        return [outcome.reward for outcome in self.last_outcomes]
