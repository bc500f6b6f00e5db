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


def group_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = False,
                     eps: float = 1e-4) -> torch.Tensor:
    """Reward minus its group's mean, optionally over (group std + eps); shape ``(N*G,)``.

    The release does not scale by the std (Dr. GRPO style), so that is the default here too.
    A group of one has no baseline to compare with and gets advantage 0.
    """
    grouped = _groups(rewards.to(torch.float32) if not rewards.is_floating_point() else rewards, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped)
        advantages = advantages / (std + eps)
    return advantages.reshape(-1)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """False for every member of a group whose rewards are all equal: zero advantage, no signal.

    The release drops those groups from the batch rather than spending compute on them.
    """
    grouped = _groups(rewards, group_size)
    varied = grouped.amax(dim=1) != grouped.amin(dim=1)
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


def mode_advantages(rewards: torch.Tensor, modes: torch.Tensor, p_short: torch.Tensor, p_think: torch.Tensor,
                    group_size: int, within_mode: bool = False, control_gradient: str = "exact",
                    centering: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
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
    ``A_i = G (rbar_c - rbar_other) / n_c``, so the group pushes the logit difference
    ``log pi(short) - log pi(think)`` towards its better mode by ``rbar_s - rbar_t`` however sure the
    policy already is. The exact gradient carries the factor ``q_s q_t``, which vanishes as the choice
    saturates: once a blind shift has taken P(think) near 0 on every prompt, the prompts where thinking pays
    can no longer pull it back. The natural one is the same direction per prompt, not the on-policy gradient
    of the mix (it is its Fisher-preconditioned version, prompt by prompt).

    Both forms pull each group's log-odds ``log pi(think) - log pi(short)`` by one number, its *pull*
    (``pi(think) (rbar_t - V)``, or ``rbar_t - rbar_s`` for the natural form); think members carry ``+G pull / n_t``,
    short members ``-G pull / n_s``. ``centering`` in [0, 1] removes that share of the batch's mean pull (over
    the groups holding both modes) from every group's pull. Why: at the decision point every prompt looks
    alike to the model (the chat template's last tokens), so a pull shared by the batch moves the choice of
    *every* prompt at once, long before a pull that differs between prompts can teach it to tell them apart.
    With the easy prompts in the majority that common pull is a blind shift to ``<short>`` on every level,
    hard ones included (``benchmarks/decision_probe.py`` shows it in minutes). Centred, the batch pulls
    hard prompts towards thinking *relative to* easy ones: the choice learns difficulty instead of a
    bias. ``centering=1`` is no longer the on-policy gradient of the mix (its shared part is gone); 0 is.

    Response tokens. ``within_mode=False``: the plain group advantage (as GRPO). ``True``: reward minus the
    mean of the same mode's answers in the group, so that a thinking answer is not pushed down merely for
    being a thinking answer in a group where short ones paid more: the response term then improves answers
    inside each mode and only the control term chooses the mode. An answer alone in its mode gets 0; one
    without a control token gets the plain group advantage.
    """
    grouped = _groups(rewards.to(torch.float32) if not rewards.is_floating_point() else rewards, group_size)
    modes = modes.view_as(grouped)
    p_short, p_think = p_short.view_as(grouped).to(grouped.dtype), p_think.view_as(grouped).to(grouped.dtype)
    plain = grouped - grouped.mean(dim=1, keepdim=True)

    is_short, is_think = (modes == SHORT_MODE).to(grouped.dtype), (modes == THINK_MODE).to(grouped.dtype)
    n_short, n_think = is_short.sum(1, keepdim=True), is_think.sum(1, keepdim=True)
    mean_short = (grouped * is_short).sum(1, keepdim=True) / n_short.clamp(min=1)
    mean_think = (grouped * is_think).sum(1, keepdim=True) / n_think.clamp(min=1)
    both = (n_short > 0) & (n_think > 0)

    pi_short, pi_think = p_short[:, :1], p_think[:, :1]
    value = (pi_short * mean_short + pi_think * mean_think) / (pi_short + pi_think).clamp(min=1e-12)
    if control_gradient == "exact":
        pull = pi_think * (mean_think - value)  # = -pi_short * (mean_short - value): V is their weighted mean
    elif control_gradient == "natural":
        pull = mean_think - mean_short
    else:
        raise ValueError(f"control_gradient must be 'exact' or 'natural', got {control_gradient!r}")
    if not 0.0 <= centering <= 1.0:
        raise ValueError(f"centering must be in [0, 1], got {centering}")
    if centering > 0 and both.any():
        pull = pull - centering * pull[both].mean()
    two_mode = (group_size * pull * (is_think / n_think.clamp(min=1) - is_short / n_short.clamp(min=1))
                + (modes == NO_MODE).to(grouped.dtype) * (grouped - value))
    control = torch.where(both, two_mode, plain)

    if within_mode:
        own_mean = is_short * mean_short + is_think * mean_think
        response = torch.where(modes == NO_MODE, plain, grouped - own_mean)
    else:
        response = plain
    return control.reshape(-1), response.reshape(-1)
