"""DeGRPO's own settings, each declared once with its help and checked once.

Two classes hold these fields and nothing declares them again: the recipe's ``rl`` section
(:class:`thinkless_lite.config.RLConfig`, which a YAML file and ``--set rl.<key>`` fill before any model or
TRL is loaded) and the trainer's arguments (:class:`thinkless_lite.degrpo_config.DeGRPOConfig`, TRL's
``GRPOConfig`` plus these fields, which the trainer reads as ``self.args.<field>``). This module imports
neither TRL nor torch, so the config can use it while Unsloth has yet to be imported. Adding a DeGRPO setting
is one field here (and its check in :meth:`DeGRPOSettings.check_degrpo`, if it needs one) plus its use in the
trainer (docs/architecture.md shows one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from thinkless_lite.parsing import ConfigError

CONTROL_GRADIENTS = ("exact", "natural")
SCALE_REWARDS_WITH_CENSORING = ("none", "group")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class DeGRPOSettings:
    """What DeGRPO adds to GRPO: the decoupled loss, dropped groups, forced modes and the mode-choice rule
    (:class:`thinkless_lite.losses.ModeChoiceRule`), censoring. The defaults are the ``mini`` recipe's."""

    decoupled: bool = field(default=True, metadata=_help("DeGRPO (True) or vanilla GRPO token averaging (False)."))
    alpha: float = field(default=1.0, metadata=_help(
        "Weight of the control-token term. Scale it with 1/completion length: the paper's 0.001 suits ~1-4k-token answers."))
    drop_uniform_groups: bool = field(default=True, metadata=_help("Drop groups whose rewards are all equal (no signal)."))
    # The mode choice (losses.ModeChoiceRule): both modes in every group; the centred pulls rank the prompts and
    # the threshold moves all of them alike until the batch's mean pull is zero (the reward-optimal cut).
    mode_balance: float = field(default=0.5, metadata=_help(
        "Share of every group forced to a mode, half <think> and half <short> (their answers are the model's own); "
        "the control token then takes the exact two-mode expectation of its gradient, so the mode choice stays "
        "unbiased. Keeps both modes sampled, so a collapse to one mode is not absorbing. 0 = off (and then "
        "mode_centering and mode_threshold_lr must be 0 too)."))
    mode_balance_end: float | None = field(default=None, metadata=_help(
        "Share forced at the last step (linear from mode_balance); unset = constant. Every share on the way must "
        "force at least one answer of each mode (>= 2/num_generations)."))
    greedy_forced_answers: bool = field(default=True, metadata=_help(
        "Decode the answers forced to a mode greedily, as evaluation (eval.temperature 0) and the demo answer, and "
        "value each mode in a group by its forced answer (losses.mode_advantages' valued): the choice then learns "
        "which mode pays for the answers the model will give, not for answers at the sampling temperature, where "
        "a long chain errs more (SmolLM2, 2-digit sums: chains right 86% sampled at 0.6 against 100% greedy). The "
        "answers the policy chose stay sampled and every answer still trains its mode's responses. False: every "
        "answer sampled, each mode valued by all of its answers in the group."))
    control_gradient: str = field(default="exact", metadata=_help(
        "With both modes in a group: exact (the on-policy two-mode expectation) or natural (divided by the "
        "choice's Fisher information; losses.mode_advantages). The threshold always takes the natural step."))
    mode_centering: float = field(default=1.0, metadata=_help(
        "Share of the batch's mean pull on the mode choice removed from every prompt's: 1 = the loss only ranks "
        "the prompts (which to think on) and mode_threshold_lr decides where the ranking is cut; 0 = the "
        "on-policy gradient, whose shared pull moves every prompt at once (losses.mode_advantages)."))
    mode_threshold_lr: float = field(default=0.25, metadata=_help(
        "Step size of the threshold, in log-odds per unit of reward gap: after every optimizer step the batch's "
        "mean log P(think) - log P(short) is put back where the last one left it plus this x the natural gradient "
        "of a shift shared by every prompt (the groups' reward gaps think - short, weighted by q_think q_short, "
        "over that Fisher information averaged across ~10 steps), by moving the two control rows "
        "(losses.ModeChoiceRule, losses.RunningFisher). "
        "Stops where thinking and answering directly pay alike at the cut. 0 = no threshold (the mean log-odds "
        "then drifts with the ranking). Small enough that a few noisy batches do not make every choice sure "
        "before the ranking has formed (at 1.0 SmolLM2 seeds 1-2 answered directly everywhere)."))
    mode_ranking_gain_cap: float = field(default=10.0, metadata=_help(
        "The ranking's pulls are scaled by 1/4 over the run's mean Fisher information of the choice, up to this "
        "many times: once every choice is fairly sure the exact pull (q_think q_short x the reward gap) would "
        "shrink with it and the ranking stall before the prompts where thinking pays pass the cut "
        "(losses.RunningFisher.ranking_gain). One positive scale a step: the fixed points do not move. 1 = off."))
    control_rows_lr_scale: float = field(default=1.0, metadata=_help(
        "Learning rate of the control-token rows, as a multiple of learning_rate (1 = the same as LoRA's)."))
    within_mode_advantages: bool = field(default=True, metadata=_help(
        "Response tokens take reward minus the mean of their own mode in the group (the control token takes the "
        "between-mode advantage), so a thinking answer is not pushed down for being one."))
    censor_truncated: bool | None = field(default=None, metadata=_help(
        "Censor answers cut off at max_completion_length without finishing: they leave the loss (TRL's "
        "mask_truncated_completions), the group and mode means of the advantages and of the threshold, and the "
        "uniform-group check (losses.mode_advantages), instead of scoring as wrong. Otherwise the cap decides the "
        "mode: a chain that does not fit scores -1, so the control token learns where chains fit, not where "
        "thinking pays. Unset (auto): on when max_completion_length is below eval.max_new_tokens or "
        "demo.max_new_tokens (the model will answer longer than it trained), off otherwise (config.censors_truncated)."))

    def check_degrpo(self, num_generations: int, max_steps, *, censoring: bool, scale_rewards) -> None:
        """Every DeGRPO setting's check, the one place they are made: ``config.validate`` runs it as a recipe loads
        (before any model), ``DeGRPOConfig`` as it is built. ``num_generations`` is already a whole number >= 2
        (GRPO's own check); ``censoring``: whether this run censors (``censor_truncated`` resolved)."""
        if self.control_gradient not in CONTROL_GRADIENTS:
            raise ConfigError(f"rl.control_gradient must be one of {', '.join(CONTROL_GRADIENTS)}; "
                              f"got {self.control_gradient!r}")
        _check_forced_share("rl.mode_balance", self.mode_balance, num_generations)
        if not 0.0 <= self.mode_centering <= 1.0:
            raise ConfigError(f"rl.mode_centering must be within 0..1; got {self.mode_centering}")
        if self.control_rows_lr_scale <= 0:
            raise ConfigError(f"rl.control_rows_lr_scale must be > 0; got {self.control_rows_lr_scale}")
        if self.mode_threshold_lr < 0:
            raise ConfigError(f"rl.mode_threshold_lr must be >= 0; got {self.mode_threshold_lr}")
        if self.mode_ranking_gain_cap < 1:
            raise ConfigError(f"rl.mode_ranking_gain_cap must be >= 1 (1 = off); got {self.mode_ranking_gain_cap}")
        for key in ("mode_centering", "mode_threshold_lr"):
            if getattr(self, key) > 0 and self.mode_balance <= 0:
                raise ConfigError(f"rl.{key} needs both modes in every group: set rl.mode_balance > 0 too "
                                  f"(or rl.{key}=0)")
        self._check_mode_balance_schedule(num_generations, max_steps)
        if censoring and scale_rewards not in SCALE_REWARDS_WITH_CENSORING:
            raise ConfigError(f"rl.censor_truncated computes group advantages over the finished answers; "
                              f"rl.scale_rewards={scale_rewards!r} (a whole-batch std) is not supported with it: "
                              "use rl.scale_rewards none (the release's) or group")

    def mode_balance_at(self, step: int, max_steps) -> float:
        """The share of every group forced to a mode at ``step``: linear from ``mode_balance`` to
        ``mode_balance_end`` over ``max_steps`` (the trainer reads it from here)."""
        end = self.mode_balance if self.mode_balance_end is None else self.mode_balance_end
        progress = min(step / max(max_steps or 0, 1), 1.0)
        return self.mode_balance + (end - self.mode_balance) * progress

    def forces_modes(self) -> bool:
        """Whether any step forces a share of its groups to a mode."""
        return max(self.mode_balance, self.mode_balance if self.mode_balance_end is None else self.mode_balance_end) > 0

    def _check_mode_balance_schedule(self, generations: int, max_steps) -> None:
        """Every share the schedule reaches must force one answer of each mode or none: one that rounds to no pair
        mid-run would stop the run there. (A max_steps of the wrong type is TRL's check, at the stage's start.)"""
        if self.mode_balance_end is None or not isinstance(max_steps, int):
            return
        for step in range(1, max(max_steps, 1) + 1):
            share = round(self.mode_balance_at(step, max_steps), 6)
            _check_forced_share(f"rl.mode_balance_end (the share forced at step {step} on the way from "
                                f"rl.mode_balance={self.mode_balance})", share, generations,
                                fix=" as rl.mode_balance_end, or leave it unset (a constant share)")


def _check_forced_share(key: str, share: float, generations: int, fix: str = ", or 0 (off)") -> None:
    """A positive share of a group forced to a mode must force at least one answer of each mode
    (``losses.forced_modes``, which the trainer calls every step)."""
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"{key} must be within 0..1 (the share of every group forced to a mode); got {share}")
    if share > 0 and int(share * generations + 1e-9) // 2 < 1:
        smallest = math.ceil(2 / generations * 1000) / 1000  # rounded up, so that the share named is valid
        raise ConfigError(f"{key}={share} with rl.num_generations={generations} forces no answer of each mode; "
                          f"use at least {smallest:g} (2/rl.num_generations: one of each){fix}")
