"""Mode-balanced groups: forcing part of every group to each mode keeps the mode choice's gradient exact.

The control token's expected gradient is proven by enumeration on a toy with two modes (every free choice and
every right/wrong outcome weighed by its probability), against the exact on-policy value; and it is shown to be
wrong when the correction is removed (plain group advantages on a forced group).
"""

import itertools
import math

import pytest
import torch

from thinkless_lite.losses import (NO_MODE, SHORT_MODE, THINK_MODE, forced_modes, group_advantages, informative_groups,
                                   mode_advantages, threshold_step)
from thinkless_lite.rewards import RewardTable

TABLE = RewardTable()


def reward(mode: int, correct: bool) -> float:
    if mode == SHORT_MODE:
        return TABLE.short_correct if correct else TABLE.short_wrong
    return TABLE.think_correct if correct else TABLE.think_wrong


def score_gradient(mode: int, p_think: float) -> float:
    """d log pi(mode) / d theta for pi(think) = sigmoid(theta): the one parameter of the toy's mode choice."""
    return 1.0 - p_think if mode == THINK_MODE else -p_think


def expected_control_gradient(p_think: float, accuracy: dict, group_size: int, balance: float, corrected: bool):
    """E[(1/G) sum_i A_i d log pi(c_i)] over every free choice and every outcome, by enumeration."""
    pattern = forced_modes(group_size, balance)
    free = [k for k, m in enumerate(pattern) if m is None]
    total = 0.0
    for free_modes in itertools.product((SHORT_MODE, THINK_MODE), repeat=len(free)):
        modes = list(pattern)
        for k, m in zip(free, free_modes):
            modes[k] = m
        p_modes = math.prod(p_think if m == THINK_MODE else 1 - p_think for m in free_modes)
        for outcome in itertools.product((True, False), repeat=group_size):
            p_outcome = math.prod(accuracy[m] if ok else 1 - accuracy[m] for m, ok in zip(modes, outcome))
            rewards = torch.tensor([reward(m, ok) for m, ok in zip(modes, outcome)])
            modes_t = torch.tensor(modes)
            if corrected:
                control, _ = mode_advantages(rewards, modes_t, torch.full((group_size,), 1 - p_think),
                                             torch.full((group_size,), p_think), group_size)
            else:
                control = group_advantages(rewards, group_size)
            estimate = sum(a.item() * score_gradient(m, p_think) for a, m in zip(control, modes)) / group_size
            total += p_modes * p_outcome * estimate
    return total


def exact_control_gradient(p_think: float, accuracy: dict) -> float:
    """d/d theta of E_{c ~ pi}[E[r | c]] = p (1 - p) (E[r | think] - E[r | short])."""
    value = {m: accuracy[m] * reward(m, True) + (1 - accuracy[m]) * reward(m, False) for m in accuracy}
    return p_think * (1 - p_think) * (value[THINK_MODE] - value[SHORT_MODE])


@pytest.mark.parametrize("p_think, accuracy", [(0.3, {SHORT_MODE: 0.9, THINK_MODE: 0.95}),
                                               (0.05, {SHORT_MODE: 0.4, THINK_MODE: 0.9}),
                                               (0.8, {SHORT_MODE: 0.6, THINK_MODE: 0.7})])
@pytest.mark.parametrize("group_size, balance", [(4, 0.5), (6, 1.0), (8, 0.25)])
def test_forced_groups_give_the_exact_on_policy_mode_gradient(p_think, accuracy, group_size, balance):
    expected = expected_control_gradient(p_think, accuracy, group_size, balance, corrected=True)
    assert expected == pytest.approx(exact_control_gradient(p_think, accuracy), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("p_think, accuracy", [(0.05, {SHORT_MODE: 0.4, THINK_MODE: 0.9}),
                                               (0.8, {SHORT_MODE: 0.9, THINK_MODE: 0.7})])
def test_without_the_correction_forced_groups_bias_the_mode_gradient(p_think, accuracy):
    """Plain group advantages on a forced group: the mode choice is pushed by how often each mode was forced, not
    by how often the policy picks it (here off by a factor, even in sign-preserving cases)."""
    exact = exact_control_gradient(p_think, accuracy)
    plain = expected_control_gradient(p_think, accuracy, 4, 0.5, corrected=False)
    assert abs(plain - exact) > 0.2 * abs(exact)


def test_forced_modes_pattern_and_refusals():
    assert forced_modes(8, 0.0) == [None] * 8
    assert forced_modes(8, 0.5) == [THINK_MODE, THINK_MODE, SHORT_MODE, SHORT_MODE, None, None, None, None]
    assert forced_modes(8, 1.0) == [THINK_MODE] * 4 + [SHORT_MODE] * 4
    assert forced_modes(4, 0.5) == [THINK_MODE, SHORT_MODE, None, None]
    with pytest.raises(ValueError, match="forces no sample of each mode"):
        forced_modes(8, 0.2)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        forced_modes(8, 1.5)


def test_within_mode_advantages_by_hand():
    """One group: two think answers (0.5 right, -1 wrong), two short ones (1, 1), pi(think) = 0.25."""
    rewards = torch.tensor([0.5, -1.0, 1.0, 1.0])
    modes = torch.tensor([THINK_MODE, THINK_MODE, SHORT_MODE, SHORT_MODE])
    control, response = mode_advantages(rewards, modes, torch.full((4,), 0.75), torch.full((4,), 0.25), 4,
                                        within_mode=True)
    value = 0.75 * 1.0 + 0.25 * -0.25
    assert control.tolist() == pytest.approx([4 * 0.25 * (-0.25 - value) / 2] * 2 + [4 * 0.75 * (1.0 - value) / 2] * 2)
    assert response.tolist() == pytest.approx([0.75, -0.75, 0.0, 0.0])
    _, plain = mode_advantages(rewards, modes, torch.full((4,), 0.75), torch.full((4,), 0.25), 4)
    assert plain.tolist() == pytest.approx((rewards - rewards.mean()).tolist())


def test_a_group_with_one_mode_keeps_the_plain_advantage_and_an_unmoded_answer_is_scored_against_the_value():
    rewards = torch.tensor([1.0, -1.0, 1.0, 1.0, 0.5, -1.0, 1.0, -1.0])
    modes = torch.tensor([SHORT_MODE] * 4 + [THINK_MODE, NO_MODE, SHORT_MODE, SHORT_MODE])
    p_short, p_think = torch.full((8,), 0.6), torch.full((8,), 0.4)
    control, response = mode_advantages(rewards, modes, p_short, p_think, 4, within_mode=True)
    plain = group_advantages(rewards, 4)
    assert control[:4].tolist() == pytest.approx(plain[:4].tolist())
    assert response[:4].tolist() == pytest.approx(plain[:4].tolist())
    value = 0.6 * 0.0 + 0.4 * 0.5  # short mean 0, think mean 0.5
    assert control[5].item() == pytest.approx(-1.0 - value)
    assert response[5].item() == pytest.approx(plain[5].item())
    assert control[4].item() == pytest.approx(4 * 0.4 * (0.5 - value))


@pytest.mark.parametrize("p_think", [0.5, 0.05, 0.01])
def test_the_natural_control_gradient_is_the_exact_one_over_the_choices_fisher_information(p_think):
    """Same direction, but it does not vanish as P(think) goes to 0: E[natural] = exact / (p (1 - p))."""
    accuracy = {SHORT_MODE: 0.55, THINK_MODE: 0.95}
    pattern = forced_modes(4, 1.0)  # every member forced: the group's modes are fixed, only outcomes vary
    total = 0.0
    for outcome in itertools.product((True, False), repeat=4):
        p_outcome = math.prod(accuracy[m] if ok else 1 - accuracy[m] for m, ok in zip(pattern, outcome))
        rewards = torch.tensor([reward(m, ok) for m, ok in zip(pattern, outcome)])
        control, _ = mode_advantages(rewards, torch.tensor(pattern), torch.full((4,), 1 - p_think),
                                     torch.full((4,), p_think), 4, control_gradient="natural")
        total += p_outcome * sum(a.item() * score_gradient(m, p_think) for a, m in zip(control, pattern)) / 4
    exact = exact_control_gradient(p_think, accuracy)
    assert total == pytest.approx(exact / (p_think * (1 - p_think)), rel=1e-6)
    assert total == pytest.approx(0.95 * 0.5 - 0.05 - (0.55 - 0.45), rel=1e-6)  # E[r|think] - E[r|short]
    with pytest.raises(ValueError, match="control_gradient"):
        mode_advantages(rewards, torch.tensor(pattern), torch.full((4,), 0.5), torch.full((4,), 0.5), 4,
                        control_gradient="sideways")


def group_pulls(control: torch.Tensor, modes: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each group's pull on log pi(think) - log pi(short): the mean over its members of A_i * (+1 think, -1 short)."""
    sign = (modes == THINK_MODE).float() - (modes == SHORT_MODE).float()
    return (control * sign).view(-1, group_size).sum(1) / (2 * group_size)


def test_centering_removes_the_pull_the_batch_shares_and_keeps_the_differences():
    """Three groups, every member forced: an easy prompt (short pays), a hard one (think pays), another easy one.
    Centred, the pulls sum to zero over the batch and differ exactly as the uncentred ones do; at 0 nothing moves."""
    pattern = forced_modes(4, 1.0)
    outcomes = [[True, True, True, True], [True, True, True, False], [True, True, True, True]]
    rewards = torch.tensor([reward(m, ok) for group in outcomes for m, ok in zip(pattern, group)])
    modes = torch.tensor(pattern * 3)
    p_short, p_think = torch.tensor([0.3, 0.6, 0.5]).repeat_interleave(4), torch.tensor([0.7, 0.4, 0.5]).repeat_interleave(4)
    raw, response = mode_advantages(rewards, modes, p_short, p_think, 4)
    raw_pulls = group_pulls(raw, modes, 4)
    assert raw_pulls[0] < 0 < raw_pulls[1] and raw_pulls.sum() < 0  # easy prompts pull to <short>, and win
    for share in (0.0, 0.5, 1.0):
        control, centred_response = mode_advantages(rewards, modes, p_short, p_think, 4, centering=share)
        pulls = group_pulls(control, modes, 4)
        assert pulls.tolist() == pytest.approx((raw_pulls - share * raw_pulls.mean()).tolist(), abs=1e-6)
        assert centred_response.tolist() == pytest.approx(response.tolist())  # the answers' own term is untouched
    assert group_pulls(mode_advantages(rewards, modes, p_short, p_think, 4, centering=1.0)[0], modes, 4).sum() \
        == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="centering"):
        mode_advantages(rewards, modes, p_short, p_think, 4, centering=1.5)


def test_centering_leaves_no_pull_where_every_prompt_agrees():
    """Two identical groups: whatever the common pull, centred there is nothing left to learn from them."""
    pattern = forced_modes(4, 1.0)
    rewards = torch.tensor([reward(m, True) for m in pattern] * 2)
    control, _ = mode_advantages(rewards, torch.tensor(pattern * 2), torch.full((8,), 0.5), torch.full((8,), 0.5), 4,
                                 centering=1.0)
    assert control.abs().max().item() == pytest.approx(0.0, abs=1e-7)


def test_centring_ignores_the_groups_the_loss_drops():
    """A group whose rewards are all equal has pull 0 and is dropped by the trainer; counted in the batch mean it
    would shrink the centring by a share that changes from step to step, and the kept pulls would not sum to
    zero. Centred over the kept groups, they do, and the dropped group's control advantages stay 0."""
    pattern = forced_modes(4, 1.0)
    outcomes = [[True, True, True, True], [True, True, True, False], [False, False, False, False]]
    rewards = torch.tensor([reward(m, ok) for group in outcomes for m, ok in zip(pattern, group)])
    rewards[8:] = -1.0  # the third group: every answer wrong, whatever its mode
    modes = torch.tensor(pattern * 3)
    p = torch.tensor([0.3, 0.6, 0.5]).repeat_interleave(4)
    kept = torch.tensor([True] * 8 + [False] * 4)
    control, _ = mode_advantages(rewards, modes, 1 - p, p, 4, centering=1.0, kept=kept)
    pulls = group_pulls(control, modes, 4)
    assert pulls[:2].sum().item() == pytest.approx(0.0, abs=1e-6)
    assert pulls[2].item() == pytest.approx(0.0, abs=1e-7)
    counted_in = group_pulls(mode_advantages(rewards, modes, 1 - p, p, 4, centering=1.0)[0], modes, 4)
    assert abs(counted_in[:2].sum().item()) > 1e-3  # what the trainer did before: the kept pulls were off zero


def test_the_threshold_step_is_the_fisher_weighted_reward_gap_of_the_kept_groups():
    """By hand: two kept groups, gaps +0.5 (think pays) and -0.5 (short pays), at P(think) 0.5 and 0.1; a dropped
    group does not count. Zero exactly where the on-policy gradient of a shared shift is zero."""
    from thinkless_lite.losses import threshold_step

    pattern = forced_modes(4, 1.0)  # think, think, short, short
    rewards = torch.tensor([0.5, 0.5, 0.0, 0.0,   0.5, 0.5, 1.0, 1.0,   -1.0, -1.0, -1.0, -1.0])
    modes = torch.tensor(pattern * 3)
    p = torch.tensor([0.5, 0.1, 0.9]).repeat_interleave(4)
    kept = torch.tensor([True] * 8 + [False] * 4)
    fisher = torch.tensor([0.25, 0.09])
    expected = ((fisher * torch.tensor([0.5, -0.5])).sum() / fisher.sum()).item()
    assert threshold_step(rewards, modes, 1 - p, p, 4, kept=kept) == pytest.approx(expected)
    assert threshold_step(rewards, modes, 1 - p, p, 4, kept=torch.zeros(12, dtype=torch.bool)) == 0.0
    balanced = torch.tensor([0.3, 0.3, 0.5]).repeat_interleave(4)  # equal Fisher weights, gaps +0.5 and -0.5
    assert threshold_step(rewards, modes, 1 - balanced, balanced, 4, kept=kept) == pytest.approx(0.0, abs=1e-7)


def test_the_threshold_step_divides_by_the_fisher_information_averaged_over_steps():
    """By hand, with :class:`RunningFisher`: a batch of easy prompts alone (sure choice, gap against thinking)
    takes a step the size of its share of the run's Fisher information, not a full -0.5; the first batch is
    its own average (bias-corrected); a step never exceeds the largest gap it used."""
    from thinkless_lite.losses import RunningFisher, threshold_step

    pattern = forced_modes(4, 1.0)  # think, think, short, short
    modes = torch.tensor(pattern * 2)
    hard = torch.tensor([0.5, 0.5, -1.0, -1.0,   0.5, 0.5, -1.0, -1.0])  # thinking pays +1.5 at P(think) 0.5
    easy = torch.tensor([0.5, 0.5, 1.0, 1.0,   0.5, 0.5, 1.0, 1.0])  # a direct answer pays +0.5, P(think) 0.1
    at_half, at_tenth = torch.full((8,), 0.5), torch.full((8,), 0.1)

    fisher = RunningFisher(decay=0.5)
    assert threshold_step(hard, modes, 1 - at_half, at_half, 4, fisher=fisher) == pytest.approx(1.5)
    assert fisher.total / fisher.weight == pytest.approx(0.25)
    running = (0.5 * 0.5 * 0.25 + 0.5 * 0.09) / (0.5 * 0.5 + 0.5)
    easy_step = threshold_step(easy, modes, 1 - at_tenth, at_tenth, 4, fisher=fisher)
    assert easy_step == pytest.approx(-0.5 * 0.09 / running)
    assert -0.5 < easy_step < -0.2
    assert threshold_step(easy, modes, 1 - at_tenth, at_tenth, 4) == pytest.approx(-0.5)  # per batch: full size
    # A batch with no kept group adds 0 information, and moves nothing.
    before = fisher.total / fisher.weight
    assert threshold_step(easy, modes, 1 - at_tenth, at_tenth, 4, kept=torch.zeros(8, dtype=torch.bool),
                          fisher=fisher) == 0.0
    assert fisher.total / fisher.weight < before
    # Bounded by the largest gap used, however small the average has become.
    tiny = RunningFisher(decay=0.99)
    for _ in range(50):
        tiny.update(1e-6)
    assert threshold_step(hard, modes, 1 - at_half, at_half, 4, fisher=tiny) == pytest.approx(1.5)


def censored_batch():
    """Two groups of 4 at P(think) = 0.5, [think, think, short, short]; False in ``finished`` = cut off at the cap.
    Group 0: one thinking answer finished right (+0.5), the other was cut off (scored -1 as a format error);
    the short ones scored +1 and -1. Group 1: both thinking answers were cut off, both short ones right."""
    rewards = torch.tensor([0.5, -1.0, 1.0, -1.0, -1.0, -1.0, 1.0, 1.0])
    modes = torch.tensor([THINK_MODE, THINK_MODE, SHORT_MODE, SHORT_MODE] * 2)
    finished = torch.tensor([True, False, True, True, False, False, True, True])
    half = torch.full((8,), 0.5)
    return rewards, modes, finished, half


def test_cut_off_answers_leave_the_mode_means_and_a_mode_cut_off_everywhere_in_a_group_gives_no_pull():
    """By hand. Group 0: think mean 0.5 (the cut-off one left out), short mean 0, V = 0.25, pull
    = 0.5 (0.5 - 0.25) = 0.125: think +4 x 0.125 / 1, short -4 x 0.125 / 2, the cut-off answer 0. Group 1: no
    thinking answer finished, so think is absent: no pull, and the short answers' plain advantages are 0.
    Scored as wrong instead, both groups would pull towards <short> (thinking "failed" where it did not fit)."""
    rewards, modes, finished, half = censored_batch()
    control, response = mode_advantages(rewards, modes, half, half, 4, within_mode=True, finished=finished)
    assert torch.allclose(control, torch.tensor([0.5, 0.0, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0]))
    assert torch.allclose(response, torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0]))

    uncensored, _ = mode_advantages(rewards, modes, half, half, 4, within_mode=True)
    assert uncensored[0] < 0 and uncensored[4] < 0 and uncensored[6] > 0  # today's scoring: the cap decides

    step = threshold_step(rewards, modes, half, half, 4, finished=finished)
    assert step == pytest.approx(0.5)  # group 0 only: its gap, think 0.5 - short 0
    assert threshold_step(rewards, modes, half, half, 4) == pytest.approx(-1.125)  # (-0.25 - 2) / 2 uncensored


def test_cut_off_answers_cannot_make_a_group_informative_and_leave_the_plain_group_mean():
    """Group 1's finished answers all scored +1: with the cut-off ones left out it holds no comparison, so it is
    dropped; group 0's finished answers differ, so it is kept. The plain advantage's mean skips cut-off answers."""
    rewards, _, finished, _ = censored_batch()
    assert informative_groups(rewards, 4).tolist() == [True] * 8
    assert informative_groups(rewards, 4, finished=finished).tolist() == [True] * 4 + [False] * 4
    mean = (0.5 + 1.0 - 1.0) / 3
    expected = torch.tensor([0.5 - mean, 0.0, 1.0 - mean, -1.0 - mean, 0.0, 0.0, 0.0, 0.0])
    assert torch.allclose(group_advantages(rewards, 4, finished=finished), expected)
    none_finished = torch.zeros(8, dtype=torch.bool)
    assert informative_groups(rewards, 4, finished=none_finished).tolist() == [False] * 8
    assert torch.equal(group_advantages(rewards, 4, finished=none_finished), torch.zeros(8))


def test_the_ranking_gain_scales_the_pulls_by_how_sure_the_choices_have_grown_and_nothing_else():
    """By hand: the gain is 1/4 over the running Fisher information, between 1 and the cap; it multiplies every
    two-mode pull (so their ratios and zeros stay) and leaves a one-mode group's plain advantages and the response
    term alone. The rule applies it only while training (with a running Fisher) and to the exact pulls."""
    from thinkless_lite.losses import ModeChoiceRule, RunningFisher

    fisher = RunningFisher(decay=0.5)
    assert fisher.ranking_gain(10.0) == 1.0  # nothing seen yet
    fisher.update(0.25)
    assert fisher.ranking_gain(10.0) == pytest.approx(1.0)
    fisher.update(0.0125)  # bias-corrected at decay 0.5: (0.5 * 0.125 + 0.5 * 0.0125) / (0.5 * 0.5 + 0.5) = 0.0917
    assert fisher.mean == pytest.approx(0.06875 / 0.75) and fisher.ranking_gain(10.0) == pytest.approx(0.25 * 0.75 / 0.06875)
    for mean, expected in ((0.25, 1.0), (0.1, 2.5), (0.05, 5.0), (0.001, 10.0), (0.5, 1.0)):
        f = RunningFisher(decay=0.9)
        f.update(mean)
        assert f.ranking_gain(10.0) == pytest.approx(expected)
        assert f.ranking_gain(1.0) == 1.0  # cap 1: off

    modes = torch.tensor([THINK_MODE, SHORT_MODE, THINK_MODE, SHORT_MODE] + [SHORT_MODE] * 4)  # group 2: one mode
    rewards = torch.tensor([0.5, -1.0, 1.0, 0.5, 1.0, -1.0, 1.0, 1.0])
    p_short, p_think = torch.full((8,), 0.9), torch.full((8,), 0.1)
    base, response = mode_advantages(rewards, modes, p_short, p_think, 4, centering=0.0)
    scaled, scaled_response = mode_advantages(rewards, modes, p_short, p_think, 4, centering=0.0, gain=3.0)
    assert scaled[:4].tolist() == pytest.approx((3 * base[:4]).tolist())
    assert scaled[4:].tolist() == pytest.approx(base[4:].tolist())  # plain advantages: no pull to scale
    assert scaled_response.tolist() == pytest.approx(response.tolist())
    with pytest.raises(ValueError, match="gain"):
        mode_advantages(rewards, modes, p_short, p_think, 4, gain=0.0)

    rule = ModeChoiceRule(centering=0.0, threshold_lr=0.25, ranking_gain_cap=10.0)
    running = RunningFisher(decay=0.9)
    trained, _, _ = rule.advantages(rewards, modes, p_short, p_think, 4, fisher=running)
    gain = running.ranking_gain(10.0)  # this batch's information included: q_t q_s = 0.09 on one group of two
    assert gain == pytest.approx(0.25 / 0.045)
    assert trained[:4].tolist() == pytest.approx((gain * base[:4]).tolist())
    evaluated, _, _ = rule.advantages(rewards, modes, p_short, p_think, 4)  # no running Fisher: as they are
    assert evaluated.tolist() == pytest.approx(base.tolist())
    natural = ModeChoiceRule(control_gradient="natural", centering=0.0)
    plain_natural, _ = mode_advantages(rewards, modes, p_short, p_think, 4, control_gradient="natural")
    assert natural.advantages(rewards, modes, p_short, p_think, 4, fisher=RunningFisher())[0].tolist() \
        == pytest.approx(plain_natural.tolist())  # the natural pull is already Fisher-normalised per group
