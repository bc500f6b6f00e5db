"""The Thinkless reward: mode x correctness table, format errors, and the TRL reward function."""

import pytest

from thinkless_lite.rewards import (
    RewardTable,
    ScoredCompletion,
    ThinklessReward,
    score_completion,
    thinkless_reward,
)
from thinkless_lite.tokens import SHORT, THINK, ControlTokens

SHORT_RIGHT = "<short>The answer is 12."
SHORT_WRONG = "<short>The answer is 13."
THINK_RIGHT = "<think>3 boxes of 4 apples: 3 * 4 = 12.</think>So there are \\boxed{12} apples."
THINK_WRONG = "<think>3 boxes of 4 apples: 3 + 4 = 7.</think>So there are \\boxed{7} apples."


# Every cell a different value, so a lookup into the wrong cell cannot pass.
DISTINCT = RewardTable(short_correct=2.0, think_correct=0.25, short_wrong=-0.5, think_wrong=-0.75, format_error=-3.0)


@pytest.mark.parametrize("completion, mode, correct, cell", [
    (SHORT_RIGHT, SHORT, True, "short_correct"),
    (THINK_RIGHT, THINK, True, "think_correct"),
    (SHORT_WRONG, SHORT, False, "short_wrong"),
    (THINK_WRONG, THINK, False, "think_wrong"),
])
def test_mode_by_correctness_table(completion, mode, correct, cell):
    reward = getattr(DISTINCT, cell)
    assert score_completion(completion, "12", DISTINCT) == ScoredCompletion(reward, mode, correct, False)
    assert thinkless_reward(completion, "12", DISTINCT) == reward
    assert thinkless_reward("12", "12", DISTINCT) == DISTINCT.format_error


def test_the_default_table_makes_thinking_pay_only_where_short_answers_fail():
    """What the method needs of the table, not its digits: a right short answer beats a right thought-out one,
    which beats any wrong answer; a wrong answer costs the same in either mode (no mode is a safe way to fail);
    a malformed completion is no better than a wrong one."""
    table = RewardTable()
    assert table.short_correct > table.think_correct > max(table.short_wrong, table.think_wrong)
    assert table.short_wrong == table.think_wrong
    assert table.format_error <= table.short_wrong


@pytest.mark.parametrize("completion, mode", [
    ("The answer is 12.", None),  # no control token
    ("", None),
    (None, None),
    ("<think>3 * 4 = 12, so the answer is 12", THINK),  # never closes its reasoning
    ("<short>I am not sure.", SHORT),  # no parsable answer
    ("<think>3 * 4 = 12</think>", THINK),  # empty answer part
    ("<think>\\boxed{12}</think>Done, see above.", THINK),  # the answer only in the reasoning
])
def test_format_errors(completion, mode):
    scored = score_completion(completion, "12")
    assert scored == ScoredCompletion(RewardTable().format_error, mode, correct=False, format_error=True)


def test_answer_is_read_only_after_think_end():
    completion = "<think>First guess: the answer is 12. Recheck: 3 * 5.</think>The answer is 15."
    assert score_completion(completion, "15").correct
    assert not score_completion(completion, "12").correct
    assert thinkless_reward(completion, "12") == -1.0


def test_leading_whitespace_before_the_control_token_is_tolerated():
    assert thinkless_reward("  <short>12", "12") == 1.0


def test_symbolic_answers_are_graded():
    assert thinkless_reward("<short>$\\frac{1}{2}$", "0.5") == 1.0
    assert thinkless_reward("<think>...</think>\\boxed{[-2, 7)}", "[-2,7)") == 0.5


def test_custom_control_tokens():
    tokens = ControlTokens(short="<|short|>", think="<|think|>", think_end="<|/think|>")
    assert thinkless_reward("<|short|>12", "12", tokens=tokens) == 1.0
    assert thinkless_reward("<|think|>3*4</think><|/think|>12", "12", tokens=tokens) == 0.5
    assert thinkless_reward("<short>12", "12", tokens=tokens) == -1.0  # not this model's token


def test_reward_function_with_trl_style_kwargs():
    reward_fn = ThinklessReward()
    assert reward_fn.__name__ == "thinkless_reward"
    rewards = reward_fn(
        completions=[SHORT_RIGHT, THINK_RIGHT, SHORT_WRONG, "no token 12"],
        prompts=["p"] * 4,
        answer=["12", "12", "12", "12"],
        completion_ids=[[1], [2], [3], [4]],
        trainer_state=None,
    )
    assert rewards == [1.0, 0.5, -1.0, -1.0]
    # what the trainer's metrics read: every completion's outcome
    assert [(o.mode, o.correct, o.format_error) for o in reward_fn.last_outcomes] == [
        ("short", True, False), ("think", True, False), ("short", False, False), (None, False, True)]


def test_reward_function_options():
    reward_fn = ThinklessReward(RewardTable(think_correct=0.0), answer_column="gold")
    assert reward_fn([THINK_RIGHT], gold=["12"]) == [0.0]
    assert reward_fn([[{"role": "assistant", "content": SHORT_RIGHT}]], gold=["12"]) == [1.0]
    with pytest.raises(KeyError, match="gold"):
        reward_fn([SHORT_RIGHT], answer=["12"])
    with pytest.raises(ValueError):
        reward_fn([SHORT_RIGHT, SHORT_RIGHT], gold=["12"])
