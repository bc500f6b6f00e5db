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


@torch.no_grad()
def clip_fraction(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, clip_eps: float = 0.2) -> torch.Tensor:
    """Share of active tokens whose loss is the clipped branch (a trust-region health metric)."""
    mask = mask.to(logps.dtype)
    unclipped, clipped = _per_token_losses(logps, old_logps, advantages, mask, clip_eps)
    return _masked_mean((clipped > unclipped).to(unclipped.dtype), mask)


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


def decoupled_token_weights(mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """Weights with ``sum(w * loss * mask) / mask.sum() == degrpo_loss(...)`` (decoupled, one batch).

    The control column weighs ``alpha * mask.sum() / (sequences with an active control token)``,
    response columns ``mask.sum() / (active response tokens)``; see :func:`loss_token_weights`.
    """
    return loss_token_weights(mask, alpha, decoupled=True)
