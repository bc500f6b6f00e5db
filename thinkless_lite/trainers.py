"""The two trainers: TRL's SFTTrainer for the warm-up and GRPOTrainer for DeGRPO, each with the smallest
overrides that make them portable (CPU) and, for GRPO, turn the stock loss into the decoupled one.

DeGRPO:

Generation, vLLM, Unsloth's patched trainer, accelerate, checkpointing and logging all stay TRL's.
The loss itself comes from one hook, ``_generate_and_score_completions``, which hands TRL's loss per-token
advantages of shape (B, T) (TRL's ``_compute_loss`` accepts them); five more overrides, each pinned by
``tests/test_trainer.py``, force modes while generating, keep the rewards, batch the log-probs by length,
bridge Unsloth and give the control rows their own learning rate. With TRL's token-sum ``dapo``
aggregation, whose normaliser spans the whole generation batch on every process, per-token weights
from :func:`thinkless_lite.losses.loss_token_weights` make the stock clipped surrogate equal to
:func:`thinkless_lite.losses.degrpo_loss` exactly (the surrogate is positively homogeneous in A).

Under Unsloth (``import unsloth`` rewrites ``trl.GRPOTrainer``; this class then inherits the rewrite)
two more things hold: ``compute_loss`` re-lays the advantages into the columns of Unsloth's own loss
(:func:`thinkless_lite.compat.unsloth_loss_inputs`), and the log-prob hook passes Unsloth's extra
positional flag through untouched. The KL reference is the starting adapter on both
(:func:`thinkless_lite.compat.ensure_reference_adapter`).

The mode choice follows :class:`thinkless_lite.losses.ModeChoiceRule`: centred control advantages through the
loss, and after each optimizer step (transformers' ``on_optimizer_step`` callback) the threshold held by a shift
of the two control tokens' output rows (``DeGRPOMixin.hold_threshold``).

Also here: dropping groups whose rewards are all equal (as the release does) and the metrics users
watch (think ratio, accuracy per mode, tokens per mode, all-correct / all-wrong groups); and three speed-ups
that leave the trained weights and the optimizer untouched: the loss forward runs in micro-batches of similar
answer length, each cut after its last real column (:mod:`thinkless_lite.microbatching`); generation decodes each
LoRA layer as one matmul on a merged copy of its weight (:func:`thinkless_lite.compat.merged_lora_weights`; the
same tokens up to float rounding), and on a CPU dequantizes 4-bit base weights once, not at every token
(:func:`thinkless_lite.compat.dequantized_4bit_weights`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TrainerCallback
from transformers.trainer_callback import ExportableState
from trl import GRPOTrainer, SFTTrainer

from thinkless_lite.compat import (dequantized_4bit_weights, ensure_reference_adapter, fused_logprobs_available,
                                   instance_attribute, merged_lora_weights, plain_logps_and_entropies, prepare_for_training,
                                   trainer_flavour, unsloth_loss_inputs)
from thinkless_lite.control_rows import (assert_control_rows_trainable, control_rows_folded, decision_rows,
                                         scale_control_rows_learning_rate)
from thinkless_lite.degrpo_config import DeGRPOConfig
from thinkless_lite.ended_rows import ended_rows_dropped
from thinkless_lite.losses import (NO_MODE, SHORT_MODE, THINK_MODE, ModeChoiceRule, forced_modes, group_advantages,
                                   informative_groups, loss_token_weights, shift_log_odds_)
from thinkless_lite.microbatching import MICRO_BATCH_OVERHEAD_TOKENS, length_grouped_logps
from thinkless_lite.rewards import ThinklessReward
from thinkless_lite.tokens import SHORT, THINK, ControlTokens

log = logging.getLogger("thinkless_lite")

# Above this share of thinking answers cut off at the training cap (over the run so far, once it has seen
# CLIPPED_THINK_MIN_ANSWERS of them, so one unlucky batch does not), the run warns once: the cap, not the reward,
# then decides much of what the mode choice sees.
CLIPPED_THINK_WARNING = 0.2
CLIPPED_THINK_MIN_ANSWERS = 32


class PortableSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss falls back to the model's own cross-entropy where TRL's kernels cannot run.

    The collator's labels already carry -100 on prompt tokens (completion-only loss), so the plain
    ``Trainer.compute_loss`` (``model(**inputs).loss`` with ``num_items_in_batch``) is the same loss.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        prepare_for_training(self.model)
        assert_control_rows_trainable(self.model)  # fails loudly, naming the tensor, if a backend froze a row

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if fused_logprobs_available():
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs = {k: v for k, v in inputs.items() if k != "completion_mask"}
        return super(SFTTrainer, self).compute_loss(model, inputs, return_outputs=return_outputs,
                                                    num_items_in_batch=num_items_in_batch)


class DeGRPOMixin:
    """What DeGRPO changes in a GRPOTrainer; mixed into whichever one ``trl`` exports (see ``DeGRPOTrainer``).

    Its settings are its arguments' (``args``, a :class:`thinkless_lite.degrpo_config.DeGRPOConfig`, checked when
    built), read as ``self.args.<field>``.

    ``backend`` is the model's (``unsloth``, ``hf``, ``full``): Unsloth's trainer only works with an
    Unsloth model and the stock one only with a plain one, so a mismatch (``unsloth`` imported after this
    module, or imported at all for an ``hf`` run) stops here with what to do, not mid-step.
    """

    def __init__(self, *args, recorder: ThinklessReward | None = None, backend: str | None = None,
                 control_tokens: ControlTokens = ControlTokens(), **kwargs):
        check_trainer_flavour(type(self), backend)
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, DeGRPOConfig):
            raise TypeError("DeGRPOTrainer takes its settings from args=DeGRPOConfig(...) "
                            f"(thinkless_lite.degrpo_config), not from a {type(self.args).__name__}")
        prepare_for_training(self.model)
        assert_control_rows_trainable(self.model)  # fails loudly, naming the tensor, if a backend froze a row
        if self.beta != 0.0:
            ensure_reference_adapter(self.accelerator.unwrap_model(self.model))
        self._never_sample_padding()
        if self.use_vllm and self.args.greedy_forced_answers and self.args.forces_modes():
            raise ValueError("rl.greedy_forced_answers decodes some rows of a batch greedily through transformers' "
                             "generate; vLLM samples every row alike: set rl.greedy_forced_answers=false with vLLM")
        self._clipped_think = [0.0, 0.0]  # thinking answers cut off, thinking answers, over the run's steps
        self._degrpo_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}  # per step, until logged
        self._warned_clipped = False
        self.recorder = recorder
        self._last_rewards: torch.Tensor | None = None
        self.mode_rule = ModeChoiceRule.of(self.args)
        self._threshold: dict | None = None  # the batch's prompts and where its mean log-odds must be after a step
        self._fisher = self.mode_rule.running_fisher()  # the threshold's, over the run's steps (checkpointed)
        if self.mode_rule.threshold_lr > 0:
            self.add_callback(ThresholdCallback(self))
        vocab = self.processing_class.get_vocab()
        missing = [t for t in (control_tokens.short, control_tokens.think) if t not in vocab]
        if missing:
            raise ValueError(f"the tokenizer has no control token {missing}: load the model with "
                             "thinkless_lite.load_model, which adds them")
        self.mode_ids = {SHORT_MODE: vocab[control_tokens.short], THINK_MODE: vocab[control_tokens.think]}
        self._forced: list[int | None] = []
        if self.mode_rule.threshold_lr > 0:
            decision_rows(self.accelerator.unwrap_model(self.model), self.mode_ids[THINK_MODE],
                          self.mode_ids[SHORT_MODE])  # fails here, naming the fix, if the rows are not trained

    def _never_sample_padding(self) -> None:
        """The pad token is padding, never content: it is kept out of sampling (TRL's documented
        ``suppress_tokens`` generation setting). Unsloth's loss removes every pad token from a sequence
        before scoring it, so an answer that contained one would be scored on another text than TRL's."""
        pad = self.processing_class.pad_token_id
        if pad is None or self.use_vllm:  # vLLM's SamplingParams have no suppress_tokens
            return
        suppressed = sorted({*(self.generation_kwargs.get("suppress_tokens") or []), pad})
        self.generation_kwargs["suppress_tokens"] = suppressed
        self.generation_config.suppress_tokens = suppressed

    @property
    def on_unsloth(self) -> bool:
        return trainer_flavour(type(self)) == "unsloth"

    # Score the batch in micro-batches of similar length, each cut after its last real column
    # (thinkless_lite.microbatching): the same log-probs, loss and gradients without computing a short answer
    # padded to the longest. False: TRL's one padded rectangle (kept for comparison: tests, benchmarks/rl_step.py).
    length_grouped_batches = True
    micro_batch_overhead_tokens = MICRO_BATCH_OVERHEAD_TOKENS  # a split must save more padded tokens than this

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, *args, **kwargs):
        """TRL's fused head needs Triton (GPU); elsewhere the same numbers come from a plain forward. Either runs
        once per length group (``length_grouped_batches``).

        Everything after ``compute_entropy`` passes through as given: Unsloth calls this with a seventh
        positional argument (``compute_efficient``) that TRL's signature does not have.
        """
        multimodal = any(v is not None for k, v in kwargs.items() if k != "compute_aux_loss")
        if self.on_unsloth or args or multimodal:
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              batch_size, compute_entropy, *args, **kwargs)
        aux = bool(kwargs.get("compute_aux_loss", False))
        if self.length_grouped_batches and not aux:  # MoE aux losses average over micro-batches: keep TRL's
            logps, entropies = length_grouped_logps(
                lambda ids, mask, keep: self._logps_and_entropies(model, ids, mask, keep, None, compute_entropy),
                input_ids, attention_mask, logits_to_keep, max_rows=batch_size,
                overhead=self.micro_batch_overhead_tokens)
            return logps, entropies, None
        return self._logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, batch_size,
                                         compute_entropy, aux)

    def _logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy,
                             compute_aux_loss=False):
        """TRL's fused head where Triton runs (GPU), a plain forward elsewhere: the same numbers."""
        if fused_logprobs_available():
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              batch_size, compute_entropy,
                                                              compute_aux_loss=compute_aux_loss)
        return plain_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size,
                                         compute_entropy, compute_aux_loss)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.on_unsloth:
            inputs = unsloth_loss_inputs(inputs, self.processing_class.pad_token_id)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def create_optimizer(self):
        """Transformers' optimizer, with the control rows in a group of their own when their learning rate is
        scaled (``control_rows_lr_scale``; the scheduler, made after this, keeps the ratio)."""
        optimizer = super().create_optimizer()
        scale = self.args.control_rows_lr_scale
        if scale != 1.0 and not scale_control_rows_learning_rate(optimizer, self.model, scale):
            raise ValueError("control_rows_lr_scale is set but the model trains no control rows "
                             "(model.train_control_rows, or an adapter without trainable_token_indices)")
        return optimizer

    def current_mode_balance(self) -> float:
        """The share of every group forced to a mode at this step (``DeGRPOSettings.mode_balance_at``)."""
        return self.args.mode_balance_at(self.state.global_step, self.args.max_steps)

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        """Sample in eval mode, and prefill the control token of the group members forced to a mode.

        Eval mode: with gradient checkpointing on, a model in train mode drops its KV cache while ``generate``
        still feeds one token per step, so every token after the first loses its context. The trained control
        rows are folded into the embedding (and head) meanwhile: PEFT's trainable-token wrapper would rebuild
        the whole table on every forward, i.e. for every generated token.

        Forcing: TRL lays out each prompt's group consecutively; member k of a group is forced as
        :func:`thinkless_lite.losses.forced_modes` says. Its prompt gets the control token appended, and the
        token is put back at the head of its completion, so the completion is the same shape as a sampled one
        (control token in column 0) and everything after it is the model's own answer given that mode. With
        ``greedy_forced_answers`` that answer is decoded greedily (:func:`greedy_rows`), as evaluation decodes.
        """
        forced = self._forced_rows(len(prompt_ids)) if self.model.training else [None] * len(prompt_ids)
        self._forced = forced
        if any(mode is not None for mode in forced):
            prompt_ids = [list(ids) + ([self.mode_ids[mode]] if mode is not None else [])
                          for ids, mode in zip(prompt_ids, forced)]
        greedy = [mode is not None and self.args.greedy_forced_answers for mode in forced]
        was_training = self.model.training
        self.model.eval()
        try:
            unwrapped = self.accelerator.unwrap_model(self.model)
            with control_rows_folded(unwrapped), self._generation_weights(unwrapped), greedy_rows(unwrapped, greedy), \
                    ended_rows_dropped(unwrapped, self.drop_ended_rows_in_generation):
                completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
        finally:
            self.model.train(was_training)
        if any(mode is not None for mode in forced):
            limit = self.max_completion_length
            completion_ids = [([self.mode_ids[mode]] + list(ids))[:limit] if mode is not None else ids
                              for ids, mode in zip(completion_ids, forced)]
            if logprobs is not None:  # vLLM's sampling log-probs: none for a token it did not sample
                logprobs = [([float("nan")] + list(lp))[:limit] if mode is not None else lp
                            for lp, mode in zip(logprobs, forced)]
        return completion_ids, logprobs

    # Generate with 4-bit base weights dequantized once per generation on a CPU, not once per token
    # (thinkless_lite.compat.dequantized_4bit_weights: the same tokens). False: bitsandbytes' per-call path.
    dequantize_for_generation = True
    # Generate with each LoRA layer as one matmul on a merged copy of its weight (thinkless_lite.compat.
    # merged_lora_weights: the trained weights untouched, the same tokens up to float rounding). False: PEFT's
    # unmerged forward (base matmul + the two LoRA matmuls at every token).
    merge_lora_for_generation = True
    # Decode only the rows that have not ended (thinkless_lite.ended_rows: the same tokens up to float rounding).
    # False: transformers' generate decodes every row to the batch's last token.
    drop_ended_rows_in_generation = True

    @contextlib.contextmanager
    def _generation_weights(self, model):
        """The weights generation decodes with: merged LoRA first (it reads the 4-bit layers before
        ``dequantized_4bit_weights`` hooks them), then the 4-bit base dequantized once; each behind its switch."""
        with contextlib.ExitStack() as stack:
            if self.merge_lora_for_generation:
                stack.enter_context(merged_lora_weights(model, four_bit=self.dequantize_for_generation))
            if self.dequantize_for_generation:
                stack.enter_context(dequantized_4bit_weights(model))
            yield model

    def _forced_rows(self, local_rows: int) -> list[int | None]:
        balance = self.current_mode_balance()
        if balance <= 0:
            return [None] * local_rows
        pattern = forced_modes(self.num_generations, balance)
        start = self.accelerator.process_index * local_rows
        return [pattern[(start + i) % self.num_generations] for i in range(local_rows)]

    @torch.no_grad()
    def _decision_point(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> "DecisionPoint":
        """One forward over the distinct prompts, in eval mode (no dropout): the policy's probabilities of
        ``<short>``/``<think>`` at the sampling temperature over the whole vocabulary (what sampling draws from),
        the log-odds ``log p(think) - log p(short)`` at temperature 1 (what evaluation and the demo read), and the
        states the output head saw (``(U, d)``, to shift the log-odds along)."""
        unique, first, inverse = distinct_rows(prompt_ids)
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        # Unsloth's log-prob code leaves its models returning hidden states in place of logits; not here.
        hidden_flag = os.environ.pop("UNSLOTH_RETURN_HIDDEN_STATES", None)
        seen: list[torch.Tensor] = []
        hook = model.get_output_embeddings().register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        model.eval()
        try:
            with control_rows_folded(model):
                logits = model(input_ids=unique, attention_mask=prompt_mask[first], logits_to_keep=1).logits[:, -1]
        finally:
            hook.remove()
            model.train(was_training)
            if hidden_flag is not None:
                os.environ["UNSLOTH_RETURN_HIDDEN_STATES"] = hidden_flag
        ids = [self.mode_ids[SHORT_MODE], self.mode_ids[THINK_MODE]]
        if logits.shape[-1] <= max(ids):
            raise RuntimeError(f"the model's forward returned {logits.shape[-1]} columns, not its vocabulary's "
                               "logits: cannot read P(<short>) and P(<think>)")
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)[:, ids]
        pair = logits[:, ids].float()
        hidden = seen[-1][:, -1].float() if seen else None
        return DecisionPoint(probs=probs[inverse], log_odds=(pair[:, 1] - pair[:, 0]), hidden=hidden,
                             inverse=inverse, prompts=(unique, prompt_mask[first]))

    @torch.no_grad()
    def hold_threshold(self) -> None:
        """After an optimizer step: put the batch's mean log-odds where the threshold step put it.

        The step moved the ranking (LoRA and rows, by the centred pulls) and with it, since every prompt looks
        alike at the decision point, the log-odds of all prompts by a common amount; that common amount is the
        threshold's alone (:class:`thinkless_lite.losses.ModeChoiceRule`). One forward over the batch's prompts
        measures where their mean went, and the output rows of the two control tokens move it back onto the
        target, along the direction that shifts every one of those prompts alike
        (:func:`thinkless_lite.losses.shift_log_odds_`). Gathered over processes, so every replica moves alike."""
        if self._threshold is None:
            return
        ids, mask = self._threshold["prompts"]
        now = self._decision_point(ids, mask)
        if now.hidden is None:
            raise RuntimeError("the output head was not called on the decision point's states (a backend computing "
                               "logits without it?): rl.mode_threshold_lr needs them; set it to 0")
        # Per row (a prompt once per group member), so every process gathers tensors of the same shape.
        log_odds = self.accelerator.gather(now.log_odds[now.inverse])
        hidden = self.accelerator.gather(now.hidden[now.inverse])
        amount = self._threshold["target"] - log_odds.mean().item()
        think_row, short_row = decision_rows(self.accelerator.unwrap_model(self.model), self.mode_ids[THINK_MODE],
                                             self.mode_ids[SHORT_MODE])
        shift_log_odds_(think_row, short_row, hidden, amount)
        self._threshold["held"] += amount

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = rewards  # gathered over processes, groups consecutive
        return rewards

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        local = out["completion_ids"].shape[0]
        start = self.accelerator.process_index * local
        rewards = torch.nansum(self._last_rewards, dim=1)
        device = out["completion_ids"].device
        finished_local = finished_answers(out["completion_ids"], self.eos_token_ids, self.max_completion_length)
        all_finished = self.accelerator.gather(finished_local.float()).bool().to(rewards.device)
        settings = self.args
        censored = all_finished if settings.censor_truncated else None
        keep_all = informative_groups(rewards, self.num_generations, finished=censored) \
            if settings.drop_uniform_groups else torch.ones_like(rewards, dtype=torch.bool)
        keep = keep_all[start:start + local].to(out["completion_mask"].device)
        if settings.censor_truncated:  # TRL's mask_truncated_completions already did; kept: the hook stands alone
            keep = keep & finished_local.to(keep.device)
        # A pad token the model wrote inside an answer counts as padding, as it does in Unsloth's loss mask.
        answer_tokens = out["completion_mask"].float() * (out["completion_ids"] != self.processing_class.pad_token_id)
        mask = answer_tokens * keep[:, None].float()
        # Global counts, so every process weights its tokens against the same whole batch.
        counts = torch.stack([mask[:, 0].sum(), mask[:, 1:].sum(), (mask.sum(1) > 0).float().sum()])
        counts = self.accelerator.reduce(counts, reduction="sum")
        weights = loss_token_weights(
            mask, alpha=settings.alpha, decoupled=settings.decoupled, normalizer=out["num_items_in_batch"].float(),
            n_control=counts[0], n_response=counts[1], n_sequences=counts[2])

        first = out["completion_ids"][:, 0]
        modes = torch.full_like(first, NO_MODE)
        modes[first == self.mode_ids[SHORT_MODE]] = SHORT_MODE
        modes[first == self.mode_ids[THINK_MODE]] = THINK_MODE
        decision = self._decision_point(out["prompt_ids"], out["prompt_mask"])
        probs = decision.probs
        forced = torch.tensor([mode is not None for mode in (self._forced or [None] * local)], device=device)
        difficulty = torch.tensor([float(x.get("difficulty") or 0) for x in inputs], device=device)
        p_choice = torch.sigmoid(decision.log_odds)[decision.inverse]  # P(<think>) as evaluation reads it
        rows = self.accelerator.gather(torch.stack([modes.float(), probs[:, 0], probs[:, 1], forced.float(),
                                                    difficulty, p_choice], dim=1))
        all_modes, p_short, p_think, all_forced, all_difficulty, all_p_choice = rows.unbind(1)
        shift = 0.0
        if settings.forces_modes() or settings.within_mode_advantages:
            control, response, shift = self.mode_rule.advantages(
                rewards.to(device), all_modes.long(), p_short, p_think, self.num_generations,
                kept=keep_all.to(device) if settings.drop_uniform_groups else None,
                fisher=self._fisher if self.model.training else None,
                finished=censored.to(device) if censored is not None else None,
                valued=all_forced.bool() if settings.greedy_forced_answers else None)  # none forced: every answer
            advantages = response[start:start + local, None].expand_as(weights).clone()
            advantages[:, 0] = control[start:start + local]
        elif settings.censor_truncated:  # TRL's advantages took the cut-off answers' rewards into the group means
            advantages = group_advantages(rewards.to(device), self.num_generations,
                                          scale_by_std=self.scale_rewards == "group",
                                          finished=censored.to(device))[start:start + local, None]
        else:
            advantages = out["advantages"].reshape(-1, 1)
        out["advantages"] = advantages * weights
        if self.mode_rule.threshold_lr > 0 and self.model.training:
            held_before = self._threshold["held"] if self._threshold is not None else float("nan")
            mean_log_odds = self.accelerator.gather(decision.log_odds[decision.inverse]).mean().item()
            self._threshold = {"prompts": decision.prompts, "target": mean_log_odds + shift, "step": shift,
                               "held": 0.0, "held_before": held_before}
        self._record_metrics(out["completion_mask"], rewards, keep_all, all_forced, all_difficulty, all_p_choice,
                             all_finished)
        return out

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Transformers' documented logging hook: the metrics :meth:`_record_metrics` kept since the last log join
        ``logs``, each averaged over its steps with NaN left out (None when nothing is left), as TRL averages its
        own; evaluation's take the ``eval_`` prefix, as TRL's do."""
        mode = "train" if self.model.training else "eval"
        ours = self._degrpo_metrics[mode]
        averaged = {}
        for key, values in ours.items():
            valid = [v for v in values if not math.isnan(v)]
            averaged[f"eval_{key}" if mode == "eval" else key] = sum(valid) / len(valid) if valid else None
        ours.clear()
        super().log({**logs, **averaged}, start_time)

    def _record_metrics(self, completion_mask: torch.Tensor, rewards: torch.Tensor, keep_all: torch.Tensor,
                        forced: torch.Tensor, difficulty: torch.Tensor, p_think: torch.Tensor,
                        finished: torch.Tensor | None = None) -> None:
        """What users watch, kept per step until :meth:`log` adds them to the logs (and so to ``metrics.jsonl``):
        the think ratio of the answers the policy chose (forced ones left out), accuracy and tokens per mode
        (forced ones in: they measure the mode), the policy's mean P(<think>) (over the two control tokens at
        temperature 1: what evaluation, the tau dial and the demo read), group health, the threshold's step and
        the drift it held (``threshold_step``, ``threshold_hold``, one step late: measured after the optimizer
        step), the share of each mode's answers cut off at the training cap (``clipped/think``, ``clipped/short``,
        forced ones in; warned about once when above ``CLIPPED_THINK_WARNING`` over the run so far); and per
        difficulty level ``think_ratio/k<level>``, ``p_think/k<level>``, ``accuracy_think/k<level>``,
        ``accuracy_short/k<level>``, ``clipped_think/k<level>``, ``clipped_short/k<level>``, and with
        ``greedy_forced_answers`` the forced (greedy) answers' own accuracy, ``forced_accuracy_think/k<level>``
        and ``forced_accuracy_short/k<level>``: what valued each mode."""
        if self.recorder is None or not self.recorder.last_outcomes:
            return
        mode = "train" if self.model.training else "eval"
        outcomes = self.recorder.last_outcomes
        device = completion_mask.device
        is_think = torch.tensor([o.mode == THINK for o in outcomes], device=device, dtype=torch.float)
        is_short = torch.tensor([o.mode == SHORT for o in outcomes], device=device, dtype=torch.float)
        correct = torch.tensor([o.correct for o in outcomes], device=device, dtype=torch.float)
        fmt = torch.tensor([o.format_error for o in outcomes], device=device, dtype=torch.float)
        lengths = completion_mask.sum(1).float()
        rows = torch.stack([is_think, is_short, correct, fmt, lengths], dim=1)
        rows = self.accelerator.gather(rows)
        think, short, correct, fmt, lengths = rows.unbind(1)
        cut = torch.zeros_like(think) if finished is None else 1.0 - finished.to(device).float()
        n = rows.shape[0]
        groups = correct.view(-1, self.num_generations)
        metrics = self._degrpo_metrics[mode]

        def ratio(num, den):
            return (num / den).item() if den > 0 else float("nan")

        free = 1.0 - forced.to(device)
        metrics["think_ratio"].append(ratio((think * free).sum(), free.sum()))
        metrics["p_think"].append(p_think.mean().item())
        metrics["accuracy"].append(ratio(correct.sum(), n))
        metrics["accuracy_think"].append(ratio((correct * think).sum(), think.sum()))
        metrics["accuracy_short"].append(ratio((correct * short).sum(), short.sum()))
        metrics["format_error_rate"].append(ratio(fmt.sum(), n))
        metrics["tokens_think"].append(ratio((lengths * think).sum(), think.sum()))
        metrics["tokens_short"].append(ratio((lengths * short).sum(), short.sum()))
        metrics["groups_all_correct"].append((groups.min(1).values == 1).float().mean().item())
        metrics["groups_all_wrong"].append((groups.max(1).values == 0).float().mean().item())
        metrics["groups_dropped"].append(1.0 - keep_all.float().view(-1, self.num_generations)[:, 0].mean().item())
        clipped_think = ratio((cut * think).sum(), think.sum())
        metrics["clipped/think"].append(clipped_think)
        metrics["clipped/short"].append(ratio((cut * short).sum(), short.sum()))
        if mode == "train":
            self._clipped_think[0] += (cut * think).sum().item()
            self._clipped_think[1] += think.sum().item()
            cut_share = self._clipped_think[0] / max(self._clipped_think[1], 1.0)
            if (self._clipped_think[1] >= CLIPPED_THINK_MIN_ANSWERS and cut_share > CLIPPED_THINK_WARNING
                    and not self._warned_clipped):
                self._warned_clipped = True
                log.warning(clipped_warning(cut_share, self.max_completion_length, bool(self.args.censor_truncated)))
        if self._threshold is not None:
            metrics["threshold_step"].append(self._threshold["step"])
            metrics["threshold_hold"].append(self._threshold["held_before"])
        difficulty, p_think = difficulty.to(device), p_think.to(device)
        for level in sorted({int(v) for v in difficulty.tolist()}):
            at = (difficulty == level).float()
            metrics[f"think_ratio/k{level}"].append(ratio((think * free * at).sum(), (free * at).sum()))
            metrics[f"p_think/k{level}"].append(ratio((p_think * at).sum(), at.sum()))
            metrics[f"accuracy_think/k{level}"].append(ratio((correct * think * at).sum(), (think * at).sum()))
            metrics[f"accuracy_short/k{level}"].append(ratio((correct * short * at).sum(), (short * at).sum()))
            if self.args.greedy_forced_answers and forced.any():  # what valued each mode (greedy)
                pinned = forced.to(device) * at
                metrics[f"forced_accuracy_think/k{level}"].append(ratio((correct * think * pinned).sum(),
                                                                        (think * pinned).sum()))
                metrics[f"forced_accuracy_short/k{level}"].append(ratio((correct * short * pinned).sum(),
                                                                        (short * pinned).sum()))
            metrics[f"clipped_think/k{level}"].append(ratio((cut * think * at).sum(), (think * at).sum()))
            metrics[f"clipped_short/k{level}"].append(ratio((cut * short * at).sum(), (short * at).sum()))



class GreedyRowsProcessor(LogitsProcessor):
    """Leaves only the argmax in the rows marked greedy, so that sampling there picks it: greedy decoding for
    some rows of a sampled batch (any temperature, top-p or top-k keeps the argmax)."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        rows = self.rows.to(scores.device)[:, None]
        only_top = torch.full_like(scores, float("-inf")).scatter_(-1, scores.argmax(-1, keepdim=True), 0.0)
        return torch.where(rows, scores + only_top, scores)


@contextlib.contextmanager
def greedy_rows(model, rows: list[bool]):
    """While inside, ``model.generate`` decodes the ``rows`` marked True greedily and samples the rest (one
    batch, TRL's own call: a :class:`GreedyRowsProcessor` joins whatever processors the call brings)."""
    if not any(rows):
        yield model
        return
    sample = model.generate  # Unsloth's, where it set one on the instance
    mask = torch.tensor(rows, dtype=torch.bool)

    def generate(*args, logits_processor=None, **kwargs):
        processors = LogitsProcessorList(list(logits_processor or []) + [GreedyRowsProcessor(mask)])
        return sample(*args, logits_processor=processors, **kwargs)

    with instance_attribute(model, "generate", generate):
        yield model


def finished_answers(completion_ids: torch.Tensor, eos_token_ids, max_completion_length: int) -> torch.Tensor:
    """Per row, whether the answer ended with an end-of-sequence token within the training cap; False means it was
    cut off there. TRL pads after an answer's end (possibly with the EOS id itself) but never inside the first
    ``max_completion_length`` columns of a cut-off answer, which fills them all: so only those columns are read."""
    eos = torch.as_tensor(list(eos_token_ids), device=completion_ids.device)
    return torch.isin(completion_ids[:, :max_completion_length], eos).any(dim=1)


def clipped_warning(share: float, cap: int, censored: bool) -> str:
    """The once-per-run warning when many thinking answers do not fit the training cap, naming the fix."""
    effect = ("they are censored (left out of the loss and the mode means), so the mode choice learns from the "
              "answers that fit; prompts whose chains never fit teach it nothing" if censored else
              "they score as wrong answers, so the mode choice learns where a chain fits the cap, not where "
              "thinking pays (set rl.censor_truncated: true to censor them)")
    return (f"{share:.0%} of thinking answers were cut off at rl.max_completion_length={cap} before finishing: "
            f"{effect}. Fix: raise rl.max_completion_length to fit the chains, or train on a task whose chains fit.")


def distinct_rows(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct rows of ``ids`` (a group's members share their prompt), the index of one row holding each,
    and for every row which distinct row it is."""
    unique, inverse = torch.unique(ids, dim=0, return_inverse=True)
    first = torch.zeros(unique.shape[0], dtype=torch.long, device=ids.device)
    first.scatter_(0, inverse, torch.arange(ids.shape[0], device=ids.device))
    return unique, first, inverse


def check_trainer_flavour(trainer_class: type, backend: str | None) -> None:
    """Fail loudly when the GRPOTrainer we inherit from does not match the model's backend."""
    if backend is None:
        return
    flavour = trainer_flavour(trainer_class)
    if backend == "unsloth" and flavour != "unsloth":
        raise RuntimeError("the model uses the unsloth backend, but DeGRPOTrainer was built on stock TRL's "
                           "GRPOTrainer: thinkless_lite.trainers was imported before unsloth. Load the model "
                           "(thinkless_lite.load_model) or call thinkless_lite.model.select_backend('unsloth') "
                           "before importing thinkless_lite.trainers, or restart the Python session.")
    if backend != "unsloth" and flavour == "unsloth":
        raise RuntimeError(f"the model uses the {backend} backend, but unsloth was imported and rewrote TRL's "
                           "GRPOTrainer, which works only with Unsloth models: use model.backend=unsloth (or auto), "
                           "or run without importing unsloth.")


@dataclass
class DecisionPoint:
    """What the policy does right after each prompt of a batch (see ``DeGRPOMixin._decision_point``)."""

    probs: torch.Tensor             # (B, 2): P(<short>), P(<think>) at the sampling temperature, full vocabulary
    log_odds: torch.Tensor          # (U,): logit(<think>) - logit(<short>) per distinct prompt, temperature 1
    hidden: torch.Tensor | None     # (U, d): the states the output head read
    inverse: torch.Tensor           # (B,): which distinct prompt each row is
    prompts: tuple[torch.Tensor, torch.Tensor]  # the distinct prompts' ids and mask


class ThresholdCallback(TrainerCallback, ExportableState):
    """Transformers' documented hook right after ``optimizer.step()``: the threshold is held there. The threshold's
    running Fisher information (:class:`thinkless_lite.losses.RunningFisher`) travels in every checkpoint as this
    callback's state (``ExportableState``: written into the checkpoint's ``trainer_state.json`` with it), and is read
    back when a run resumes, so a resumed run takes the uninterrupted run's threshold steps."""

    def __init__(self, trainer: DeGRPOMixin):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.hold_threshold()

    def state(self) -> dict:
        fisher = self.trainer._fisher
        return {"args": {}, "attributes": {} if fisher is None else {"fisher_total": fisher.total,
                                                                     "fisher_weight": fisher.weight}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        attributes = saved.get("attributes", {}) if isinstance(saved, dict) else {}
        if self.trainer._fisher is not None and "fisher_total" in attributes:
            self.trainer._fisher.total = attributes["fisher_total"]
            self.trainer._fisher.weight = attributes["fisher_weight"]


class DeGRPOTrainer(DeGRPOMixin, GRPOTrainer):
    """GRPOTrainer whose loss is DeGRPO (``decoupled=True``) or token-exact vanilla GRPO (``False``)."""
