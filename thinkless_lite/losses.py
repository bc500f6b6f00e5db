"""Decoupled GRPO (DeGRPO), the Thinkless policy loss, in plain torch.

Why decouple: in vanilla GRPO the one control token (``<short>`` / ``<think>``) is averaged together
with every response token of its sequence, so its gradient shrinks with the response length: long
``<think>`` answers barely move the mode choice while short ones move it a lot, and training
collapses to one mode. Thinkless gives the control token its own normalisation and weight alpha:

    J_DeGRPO(theta) = E[ alpha * (1/G) sum_i U_{i,0}(theta)
                         + (1 / sum_i T_i) sum_i sum_{t=1..T_i} U_{i,t}(theta) ]
    U_{i,t}(theta) = min( r_{i,t} A_i, clip(r_{i,t}, 1 - eps, 1 + eps) A_i ),
    r_{i,t} = pi_theta(a_{i,t} | x, a_{i,<t}) / pi_old(a_{i,t} | x, a_{i,<t}),

i.e. the mode-selection term (t = 0) is averaged over the G sequences and the response term over
all response tokens of the batch. This is written here as the public release implements it
(VainF/Thinkless, ``verl/trainer/ppo/core_algos.py``: ``alpha * masked_mean(loss, t == 0) +
masked_mean(loss, t >= 1)``, alpha = 0.001); the loss below is -J.

Layout everywhere: ``(B, T)`` tensors over completion tokens, column 0 being the control token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _per_token_losses(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The unclipped and clipped PPO losses per token, ``-A r`` and ``-A clip(r)``.

    Padded positions get ratio 1, so padding holding -inf log-probs cannot leak NaN anywhere.
    """
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    log_ratio = torch.where(mask > 0, logps - old_logps, torch.zeros_like(logps))
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return unclipped, clipped


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over active entries; 0 (not NaN) when none is active."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def degrpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, alpha: float = 0.001, clip_eps: float = 0.2,
                decoupled: bool = True) -> torch.Tensor:
    """The scalar policy loss to minimise.

    ``advantages`` is ``(B,)`` (one per sequence) or ``(B, T)``. Decoupled: ``alpha`` times the
    control-token mean over the batch plus the mean over all response tokens of the batch.
    ``decoupled=False`` is vanilla GRPO: each sequence's mean over all its tokens (control token
    included), then the mean over the sequences. A sequence with no active token (e.g. from a
    dropped group) is no sample in either mode: it neither counts nor dilutes.
    """
    mask = mask.to(logps.dtype)
    unclipped, clipped = _per_token_losses(logps, old_logps, advantages, mask, clip_eps)
    token_loss = torch.maximum(unclipped, clipped)
    if decoupled:
        control = _masked_mean(token_loss[:, :1], mask[:, :1])
        response = _masked_mean(token_loss[:, 1:], mask[:, 1:])
        return alpha * control + response
    lengths = mask.sum(dim=1)
    per_sequence = (token_loss * mask).sum(dim=1) / lengths.clamp(min=1.0)
    return per_sequence.sum() / (lengths > 0).sum().clamp(min=1)


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be a 1-D tensor of consecutive groups of {group_size}; "
                         f"got shape {tuple(rewards.shape)}, not a multiple of {group_size}")
    return rewards.view(-1, group_size)


def _finished(finished: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``finished`` per sample laid out as ``like`` (``(N, G)``), as a 0/1 float; None: every answer finished."""
    if finished is None:
        return torch.ones_like(like)
    if finished.numel() != like.numel():
        raise ValueError(f"finished must hold one flag per sample ({like.numel()}), got {finished.numel()}")
    return finished.to(like.device).bool().view_as(like).to(like.dtype)


def group_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = False,
                     eps: float = 1e-4, finished: torch.Tensor | None = None) -> torch.Tensor:
    """Reward minus its group's mean, optionally over (group std + eps); shape ``(N*G,)``.

    The release does not scale by the std (Dr. GRPO style), so that is the default here too.
    A group of one has no baseline to compare with and gets advantage 0. ``finished`` per sample (False: an
    answer cut off at the training cap, censored): the mean and std are taken over the finished answers only,
    and a censored answer gets 0, since its reward says nothing about the answer it would have been.
    """
    grouped = _groups(rewards.to(torch.float32) if not rewards.is_floating_point() else rewards, group_size)
    done = _finished(finished, grouped)
    n = done.sum(dim=1, keepdim=True)
    mean = (grouped * done).sum(dim=1, keepdim=True) / n.clamp(min=1)
    advantages = (grouped - mean) * done
    if scale_by_std:
        var = (((grouped - mean) * done) ** 2).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)
        std = torch.where(n > 1, var.sqrt(), torch.zeros_like(var))
        advantages = advantages / (std + eps)
    return advantages.reshape(-1)


def informative_groups(rewards: torch.Tensor, group_size: int, finished: torch.Tensor | None = None) -> torch.Tensor:
    """False for every member of a group whose rewards are all equal: zero advantage, no signal.

    The release drops those groups from the batch rather than spending compute on them. With ``finished`` (per
    sample; False = cut off at the training cap, censored) only the finished answers are compared: a censored
    answer is no evidence about its mode, so it cannot make a group informative (right short answers beside
    cut-off thinking ones would otherwise teach "the mode that fits pays": the cap's verdict, not the reward's).
    A group with fewer than two finished answers, or whose finished answers all scored alike, is dropped; the
    loss masks censored answers anyway, so dropping such a group loses nothing the loss would have used.
    """
    grouped = _groups(rewards.to(torch.float32) if not rewards.is_floating_point() else rewards, group_size)
    done = _finished(finished, grouped).bool()
    high = torch.where(done, grouped, torch.full_like(grouped, -torch.inf)).amax(dim=1)
    low = torch.where(done, grouped, torch.full_like(grouped, torch.inf)).amin(dim=1)
    varied = (done.sum(dim=1) > 1) & (high != low)
    return varied.repeat_interleave(group_size)


@torch.no_grad()
def loss_token_weights(mask: torch.Tensor, alpha: float, decoupled: bool = True,
                       normalizer: torch.Tensor | float | None = None,
                       n_control: torch.Tensor | float | None = None,
                       n_response: torch.Tensor | float | None = None,
                       n_sequences: torch.Tensor | float | None = None) -> torch.Tensor:
    """Per-token weights turning a stock token-sum loss into :func:`degrpo_loss`.

    ``sum(w * loss * mask) / normalizer == degrpo_loss(..., alpha, decoupled=decoupled)``. Because
    the clipped surrogate is positively homogeneous in the advantage, a trainer that divides a token
    sum by a fixed normaliser (TRL's "dapo": ``num_items_in_batch``; "bnpo": ``mask.sum()``) and is
    handed the advantages ``A_b * w_bt`` computes DeGRPO without touching its loss code.

    Decoupled: the control column weighs ``alpha * normalizer / n_control``, response columns
    ``normalizer / n_response``. Vanilla: token t of sequence b weighs
    ``normalizer / (n_sequences * length_b)``. The counts (active control tokens, active response
    tokens, sequences with an active token) and ``normalizer`` default to this mask's own; when the
    batch is split across processes pass the whole batch's, so every shard is weighed alike.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0 (weights must keep the advantage's sign), got {alpha}")
    mask = mask.to(torch.float32) if not mask.is_floating_point() else mask
    weights = torch.zeros_like(mask)
    if mask.numel() == 0:
        return weights

    def count(value, default: torch.Tensor) -> torch.Tensor:
        return default if value is None else torch.as_tensor(value, dtype=mask.dtype, device=mask.device)

    normalizer = count(normalizer, mask.sum())
    if normalizer <= 0:
        return weights
    if decoupled:
        n_control = count(n_control, mask[:, 0].sum())
        n_response = count(n_response, mask[:, 1:].sum())
        if n_control > 0:
            weights[:, 0] = alpha * normalizer / n_control
        if n_response > 0:
            weights[:, 1:] = normalizer / n_response
    else:
        lengths = mask.sum(dim=1, keepdim=True)
        n_sequences = count(n_sequences, (lengths > 0).sum().to(mask.dtype))
        if n_sequences > 0:
            weights[:] = normalizer / (n_sequences * lengths.clamp(min=1.0))
    return weights * mask


# ---------------------------------------------------------------- mode-balanced groups

SHORT_MODE, THINK_MODE, NO_MODE = 0, 1, -1


def forced_modes(group_size: int, balance: float) -> list[int | None]:
    """Which member of every group is forced to which mode: ``balance`` of the group, half to each mode
    (``THINK_MODE`` first, then ``SHORT_MODE``), the rest sampled freely (None).

    Forcing keeps both modes sampled on every prompt, so a mode the policy has (almost) stopped choosing can
    still show that it pays: without it, collapse is absorbing (no group holds a thinking answer, so nothing
    can say that thinking was right). ``balance`` > 0 must force at least one of each mode.
    """
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"mode balance must be in [0, 1], got {balance}")
    each = int(balance * group_size + 1e-9) // 2
    if balance > 0 and each < 1:
        raise ValueError(f"mode balance {balance} of a group of {group_size} forces no sample of each mode; "
                         f"use at least {2 / group_size:.3g} (one of each) or 0 (off)")
    return [THINK_MODE] * each + [SHORT_MODE] * each + [None] * (group_size - 2 * each)


@dataclass(frozen=True)
class _ModeGroups:
    """A batch of groups seen per mode: each ``(N, G)`` or ``(N, 1)`` (one value per group)."""

    rewards: torch.Tensor
    modes: torch.Tensor
    is_short: torch.Tensor
    is_think: torch.Tensor
    n_short: torch.Tensor
    n_think: torch.Tensor
    mean_short: torch.Tensor   # the group's mean reward in each mode (the responses' baselines)
    mean_think: torch.Tensor
    value_short: torch.Tensor  # what each mode is worth in the group (the mode choice's): its valued answers'
    value_think: torch.Tensor  # mean reward, or all of its answers' where it has no valued one
    p_think: torch.Tensor      # the sampling policy's P(<think>) at the group's prompt
    q_short: torch.Tensor      # the two probabilities renormalised over the two modes
    q_think: torch.Tensor
    both: torch.Tensor         # the group holds both modes


def _mode_groups(rewards: torch.Tensor, modes: torch.Tensor, p_short: torch.Tensor, p_think: torch.Tensor,
                 group_size: int, finished: torch.Tensor | None = None,
                 valued: torch.Tensor | None = None) -> _ModeGroups:
    """The batch per group and mode. A censored answer (``finished`` False: cut off at the training cap) belongs
    to no mode here: it leaves the mode's count and mean, and a mode whose answers were all cut off is absent
    from the group (``both`` False), so the group gives the mode choice no pull from it. ``valued`` per sample
    (None: all): the answers that say what their mode is worth, where the group has one of that mode."""
    grouped = _groups(rewards.to(torch.float32) if not rewards.is_floating_point() else rewards, group_size)
    modes = modes.view_as(grouped)
    done = _finished(finished, grouped)
    p_short, p_think = p_short.view_as(grouped).to(grouped.dtype), p_think.view_as(grouped).to(grouped.dtype)
    is_short, is_think = (modes == SHORT_MODE).to(grouped.dtype) * done, (modes == THINK_MODE).to(grouped.dtype) * done
    n_short, n_think = is_short.sum(1, keepdim=True), is_think.sum(1, keepdim=True)
    total = (p_short[:, :1] + p_think[:, :1]).clamp(min=1e-12)
    mean_short = (grouped * is_short).sum(1, keepdim=True) / n_short.clamp(min=1)
    mean_think = (grouped * is_think).sum(1, keepdim=True) / n_think.clamp(min=1)
    value_short, value_think = mean_short, mean_think
    if valued is not None:
        chosen = valued.view_as(grouped).to(grouped.dtype)

        def value(in_mode: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
            count = (in_mode * chosen).sum(1, keepdim=True)
            return torch.where(count > 0, (grouped * in_mode * chosen).sum(1, keepdim=True) / count.clamp(min=1), mean)

        value_short, value_think = value(is_short, mean_short), value(is_think, mean_think)
    return _ModeGroups(rewards=grouped, modes=modes, is_short=is_short, is_think=is_think, n_short=n_short,
                       n_think=n_think, mean_short=mean_short, mean_think=mean_think, value_short=value_short,
                       value_think=value_think, p_think=p_think[:, :1], q_short=p_short[:, :1] / total,
                       q_think=p_think[:, :1] / total, both=(n_short > 0) & (n_think > 0))


def _kept_groups(kept: torch.Tensor | None, n_groups: int, group_size: int, device) -> torch.Tensor:
    """``(N, 1)`` bool: the groups the loss keeps (``kept`` per sample, as :func:`informative_groups` gives it)."""
    if kept is None:
        return torch.ones(n_groups, 1, dtype=torch.bool, device=device)
    return kept.to(device).bool().view(n_groups, group_size)[:, :1]


@dataclass
class RunningFisher:
    """The threshold's Fisher information per group, averaged over steps (exponentially, bias-corrected as
    Adam's moments are).

    Dividing each batch's gradient by the batch's own Fisher information weighs a batch of easy prompts alone
    (whose choice is already sure: tiny Fisher information, and a reward gap against thinking) as much as a
    batch holding the prompts at the cut. With 4 prompts a step a third of SmolLM2's batches held no 3-digit
    sum, and their full-size steps towards ``<short>`` kept the threshold's zero away from the on-policy one
    (seed 0: 3-digit sums at 50% think where thinking paid +0.35 a question). Over a running average the zero
    is ``E[q_t q_s (rbar_t - rbar_s)] = 0``: the on-policy gradient's.
    """

    decay: float = 0.9
    total: float = 0.0
    weight: float = 0.0

    def update(self, batch_fisher: float) -> float:
        """Add one batch's mean Fisher information per group; the running mean, this batch included."""
        self.total = self.decay * self.total + (1 - self.decay) * batch_fisher
        self.weight = self.decay * self.weight + (1 - self.decay)
        return self.mean

    @property
    def mean(self) -> float:
        """The running mean (0 before the first batch)."""
        return self.total / self.weight if self.weight > 0 else 0.0

    def ranking_gain(self, cap: float) -> float:
        """How much to scale the ranking's exact pulls by: ``1/4`` (a choice at even odds, the most Fisher
        information one prompt can carry) over the running mean, between 1 and ``cap``. Why: the exact pull
        is ``q_t q_s`` times the reward gap, so once the threshold has made every prompt's choice fairly sure
        (SmolLM2 seed 1: P(think) 0.03-0.1 on every level by step 20) the ranking stalls with it, before it
        has lifted the prompts where thinking pays past the cut. One positive number per step: the pulls keep
        their ratios (a sure prompt still moves least) and their zeros."""
        mean = self.mean
        return 1.0 if mean <= 0 else max(1.0, min(cap, 0.25 / mean))


def threshold_step(rewards: torch.Tensor, modes: torch.Tensor, p_short: torch.Tensor, p_think: torch.Tensor,
                   group_size: int, kept: torch.Tensor | None = None, fisher: RunningFisher | None = None,
                   finished: torch.Tensor | None = None, valued: torch.Tensor | None = None) -> float:
    """How far the batch asks every prompt's log-odds ``log pi(think) - log pi(short)`` to move together: the
    threshold half of the mode choice (the ranking half is :func:`mode_advantages` with ``centering=1``).

    A shift ``b`` shared by every prompt changes the expected reward of the mix by
    ``b * mean_g q_t q_s (rbar_t - rbar_s)`` (the exact on-policy gradient; a group without both modes, or one
    the loss drops, adds 0); this returns that gradient over the Fisher information ``mean_g q_t q_s``: the
    natural gradient of the one scalar. Its zero is the on-policy one (the shift that maximises the mix's
    expected reward given the ranking), so where it stops moving the centred ranking pulls are the on-policy
    pulls; unlike the plain gradient it does not vanish when every prompt's choice has saturated, so a warm-up
    that left ``<short>`` everywhere can still cross to ``<think>`` where thinking pays.

    ``fisher``: the Fisher information averaged over steps (:class:`RunningFisher`, updated here with this
    batch's); None divides by this batch's alone, i.e. returns the batch's Fisher-weighted mean reward gap.
    Never larger than the largest gap of a group it used; 0 when no kept group holds both modes. ``q`` = the
    two probabilities renormalised; ``kept`` per sample (False: a group the loss drops); ``finished`` per sample
    (False: cut off at the training cap, censored: the mode means leave it out, and a group whose answers of one
    mode were all cut off holds that mode no more, so it adds nothing); ``valued`` per sample: the answers that
    value their mode (:func:`mode_advantages`).
    """
    g = _mode_groups(rewards, modes, p_short, p_think, group_size, finished, valued)
    use = g.both & _kept_groups(kept, g.both.shape[0], group_size, g.both.device)
    information = g.q_short * g.q_think * use
    gap = g.value_think - g.value_short
    batch_fisher = information.mean().item()
    scale = fisher.update(batch_fisher) if fisher is not None else batch_fisher
    if not use.any() or scale <= 0:
        return 0.0
    bound = gap[use].abs().max().item()
    return max(-bound, min(bound, (information * gap).mean().item() / scale))


def mode_advantages(rewards: torch.Tensor, modes: torch.Tensor, p_short: torch.Tensor, p_think: torch.Tensor,
                    group_size: int, within_mode: bool = False, control_gradient: str = "exact",
                    centering: float = 0.0, kept: torch.Tensor | None = None,
                    finished: torch.Tensor | None = None, gain: float = 1.0,
                    valued: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The control token's and the response tokens' advantages, each ``(N*G,)``, for groups whose samples may
    have been forced to a mode.

    ``modes`` per sample: ``SHORT_MODE``, ``THINK_MODE`` or ``NO_MODE`` (no control token first);
    ``p_short``/``p_think`` per sample: the sampling policy's probability of each control token at its prompt's
    decision point (the same for every member of a group; detached).

    Control token. In a group that holds both modes, the exact on-policy expectation of the mode choice's
    gradient over the two modes replaces the sampled one:

        sum_c pi(c|x) (rbar_c - V) grad log pi(c|x),   V = sum_c pi(c|x) rbar_c / sum_c pi(c|x),

    where ``rbar_c`` is the mean reward of the group's answers in mode c. Their responses are the model's own
    given the mode, forced or not, so ``rbar_c`` estimates E[r | x, c] without bias, and so does the sum,
    whatever share of the group was forced. A loss that takes the mean over the G sequences of
    ``A_i grad log pi(c_i)`` gives exactly that sum when every member in mode c gets
    ``A_i = G pi(c) (rbar_c - V) / n_c``. A sample with no control token gets ``r_i - V``, as a sampled choice
    would. A group with one mode only (possible only without forcing) keeps the plain group advantage
    ``r_i - mean(r)``: with nothing to compare, the sampled estimate is all there is.

    ``control_gradient="natural"`` divides each such group's control term by the Fisher information of its
    two-mode choice, ``q_s q_t`` (``q`` = the two probabilities renormalised): every member in mode c gets
    ``A_i = G (rbar_c - rbar_other) / n_c``, so the group pushes the log-odds towards its better mode by
    ``rbar_t - rbar_s`` however sure the policy already is.

    Both forms pull each group's log-odds ``log pi(think) - log pi(short)`` by one number, its *pull*
    (``pi(think) (rbar_t - V)``, or ``rbar_t - rbar_s`` for the natural form); think members carry ``+G pull / n_t``,
    short members ``-G pull / n_s``. ``centering`` in [0, 1] removes that share of the batch's mean pull, taken
    over the groups the loss keeps that hold both modes (``kept`` per sample, False for a group the trainer
    drops), from each of those groups' pulls; with 1 they sum to zero. Why: at the decision point every prompt
    looks alike to the model, so a pull the batch shares moves the choice of *every* prompt at once and drags
    the ranking (which prompts to think on) before a pull that differs between prompts can teach it. Centred,
    the batch only ranks its prompts; *where* the ranking is cut is :func:`threshold_step`'s job, taken by a
    shift of the control rows that moves every prompt alike (the trainer's ``mode_threshold_lr``). Centring
    alone leaves the batch's mean log-odds where the warm-up left it (no pull reaches it).

    Response tokens. ``within_mode=False``: the plain group advantage (as GRPO). ``True``: reward minus the
    mean of the same mode's answers in the group, so that a thinking answer is not pushed down merely for
    being a thinking answer in a group where short ones paid more: the response term then improves answers
    inside each mode and only the control term chooses the mode. An answer alone in its mode gets 0; one
    without a control token gets the plain group advantage.

    Censored answers (``finished`` False per sample: cut off at the training cap without finishing) are no
    evidence about their mode: they get 0 in both outputs and leave every mean (the modes', the group's), and a
    mode whose answers in a group were all cut off counts as absent there, so that group gives the control token
    no pull from it (with only the other mode left, its members' plain advantages sum to zero on the one token
    they share). Otherwise the cap, not the reward, would choose the mode: a chain that does not fit scores as
    a wrong answer.

    ``gain`` (> 0) multiplies every two-mode pull (:meth:`RunningFisher.ranking_gain`): a step size, not a
    direction, so the zeros stay where they are.

    ``valued`` per sample (None: every answer): the answers whose rewards say what their mode is worth, in place
    of ``rbar_c`` wherever the group has one of mode c (the trainer passes its forced answers, decoded greedily as
    evaluation decodes: the choice then learns which mode pays for the answers the model will give). The
    responses' baselines stay the mean of all of the mode's answers.
    """
    g = _mode_groups(rewards, modes, p_short, p_think, group_size, finished, valued)
    grouped, modes, is_short, is_think, both = g.rewards, g.modes, g.is_short, g.is_think, g.both
    n_short, n_think, mean_short, mean_think = g.n_short, g.n_think, g.mean_short, g.mean_think
    done = _finished(finished, grouped)
    no_mode = (modes == NO_MODE).to(grouped.dtype) * done
    plain = (grouped - (grouped * done).sum(1, keepdim=True) / done.sum(1, keepdim=True).clamp(min=1)) * done
    value = g.q_short * g.value_short + g.q_think * g.value_think
    if control_gradient == "exact":
        pull = g.p_think * (g.value_think - value)  # = pi(think) q_s (rbar_t - rbar_s): V is their weighted mean
    elif control_gradient == "natural":
        pull = g.value_think - g.value_short
    else:
        raise ValueError(f"control_gradient must be 'exact' or 'natural', got {control_gradient!r}")
    if not 0.0 <= centering <= 1.0:
        raise ValueError(f"centering must be in [0, 1], got {centering}")
    if gain <= 0:
        raise ValueError(f"gain must be > 0, got {gain}")
    pull = pull * gain
    centred = both & _kept_groups(kept, both.shape[0], group_size, both.device)
    if centering > 0 and centred.any():
        pull = torch.where(centred, pull - centering * pull[centred].mean(), pull)
    two_mode = (group_size * pull * (is_think / n_think.clamp(min=1) - is_short / n_short.clamp(min=1))
                + no_mode * (grouped - value))
    control = torch.where(both, two_mode, plain)

    if within_mode:
        own_mean = is_short * mean_short + is_think * mean_think
        response = torch.where(modes == NO_MODE, plain, (grouped - own_mean) * done)
    else:
        response = plain
    return control.reshape(-1), response.reshape(-1)


def common_direction(hidden: torch.Tensor) -> torch.Tensor:
    """A vector ``u`` with ``h . u = 1`` for every row ``h`` of ``hidden`` (``(n, d)``: the decision-point states
    of a batch's prompts): ``mean(h)`` with the directions the prompts differ in projected out, over its
    projection. Moving the rows of ``<think>``/``<short>`` along it shifts the log-odds of all of them by the
    same amount, so a shift meant for every prompt does not also re-rank them (the states share a large common
    part but not all of it: along ``mean(h)`` alone, prompts would move in proportion to their overlap with
    it). Falls back to ``mean(h) / |mean(h)|^2`` when the differences span the mean (more prompts than
    dimensions)."""
    hidden = hidden.to(torch.float32).reshape(-1, hidden.shape[-1])
    mean = hidden.mean(0)
    spread = (hidden - mean).T  # (d, n)
    if hidden.shape[0] > 1:
        basis, r = torch.linalg.qr(spread)
        basis = basis[:, r.diagonal().abs() > 1e-6 * max(r.diagonal().abs().max().item(), 1e-30)]
        own = mean - basis @ (basis.T @ mean)
    else:
        own = mean
    reach = mean @ own
    if reach <= 1e-6 * mean.pow(2).sum():
        own, reach = mean, mean.pow(2).sum().clamp(min=1e-12)
    return own / reach


@torch.no_grad()
def shift_log_odds_(think_row: torch.Tensor, short_row: torch.Tensor, hidden: torch.Tensor, amount: float) -> None:
    """Move the output rows of ``<think>`` and ``<short>`` (in place) so that the log-odds
    ``h . (think_row - short_row)`` of every prompt whose decision-point state ``h`` is a row of ``hidden`` grow
    by exactly ``amount``, half on each row (along :func:`common_direction`). Prompts like them move by almost
    the same. The shift lives in the weights, so sampling, P(<think>), evaluation, the demo and both exports see
    it without knowing it exists."""
    if amount == 0.0:
        return
    step = 0.5 * amount * common_direction(hidden)
    think_row.add_(step.to(think_row))
    short_row.sub_(step.to(short_row))


@dataclass(frozen=True)
class ModeChoiceRule:
    """How the control token learns, in one place: the trainer, ``benchmarks/decision_probe.py`` and the bandit
    test (``tests/test_decision_rule.py``) all call :meth:`advantages`.

    The choice is split in two. The *ranking* (which prompts to think on) takes the centred pulls of
    :func:`mode_advantages` through the loss, so LoRA and the control rows learn what tells prompts apart; the
    *threshold* (where the ranking is cut) takes :func:`threshold_step` times ``threshold_lr`` as a shift of the
    log-odds of every prompt alike (:func:`shift_log_odds_`), after the optimizer step. Where the threshold
    stops moving the batch's mean pull is zero and the centred pulls equal the on-policy ones, so the fixed
    points are the on-policy gradient's: the reward-optimal routing, whatever the reward table. ``centering=0``
    with ``threshold_lr=0`` is the plain on-policy gradient (stock DeGRPO with mode-balanced groups).
    """

    within_mode: bool = True
    control_gradient: str = "exact"
    centering: float = 1.0
    threshold_lr: float = 0.25
    ranking_gain_cap: float = 10.0  # RunningFisher.ranking_gain's cap; 1: the exact pulls as they are
    fisher_decay: float = 0.9  # the threshold's Fisher information averaged over ~10 steps; 0: per batch

    @classmethod
    def of(cls, section) -> "ModeChoiceRule":
        """The rule DeGRPO's settings ask for: a recipe's ``cfg.rl`` or a trainer's ``DeGRPOConfig``."""
        return cls(within_mode=section.within_mode_advantages, control_gradient=section.control_gradient,
                   centering=section.mode_centering, threshold_lr=section.mode_threshold_lr,
                   ranking_gain_cap=section.mode_ranking_gain_cap)

    def running_fisher(self) -> RunningFisher | None:
        """A run's average of the threshold's Fisher information, to pass to every :meth:`advantages` call."""
        return RunningFisher(self.fisher_decay) if self.fisher_decay > 0 else None

    def advantages(self, rewards: torch.Tensor, modes: torch.Tensor, p_short: torch.Tensor, p_think: torch.Tensor,
                   group_size: int, kept: torch.Tensor | None = None,
                   fisher: RunningFisher | None = None, finished: torch.Tensor | None = None,
                   valued: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(control advantages, response advantages, threshold shift of the log-odds), per
        :func:`mode_advantages` and :func:`threshold_step` (``fisher``: the run's :meth:`running_fisher`;
        ``finished`` per sample, False for an answer cut off at the training cap: censored in both). The
        ranking's pulls take ``fisher``'s :meth:`RunningFisher.ranking_gain` (this batch's information included)
        when the ranking is the exact one; without ``fisher`` (evaluation, a per-batch rule) they are as they are.
        ``valued`` per sample: the answers that value their mode (:func:`mode_advantages`)."""
        step = threshold_step(rewards, modes, p_short, p_think, group_size, kept=kept, fisher=fisher,
                              finished=finished, valued=valued)  # updates fisher with this batch first
        gain = fisher.ranking_gain(self.ranking_gain_cap) \
            if fisher is not None and self.control_gradient == "exact" else 1.0
        control, response = mode_advantages(rewards, modes, p_short, p_think, group_size,
                                            within_mode=self.within_mode, control_gradient=self.control_gradient,
                                            centering=self.centering, kept=kept, finished=finished, gain=gain,
                                            valued=valued)
        return control, response, self.threshold_lr * step
