"""The T4 cost model of ``docs/gpu.md`` ("T4 cost model") as code: estimated seconds for each stage of a recipe,
and, once a stage has timed its first steps, the whole pipeline's time left.

Every figure here is an ESTIMATE (memory bandwidth and launch overhead for decoding, FLOPs at a utilisation for
training), not a measurement: the model is calibrated at run time by the ratio of a stage's measured step time to
its estimated one (:class:`PipelineEtaCallback`), so on another card, backend or model the same shape of costs
is scaled, not trusted. ``tests/test_estimates.py`` pins the recipe's figures to the ones docs/gpu.md quotes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from transformers import TrainerCallback

STAGES = ("warmup", "rl", "eval")


@dataclass(frozen=True)
class CostModel:
    """A 4-bit 1.5B model (R1-Distill-Qwen-1.5B's shapes) on a T4, as docs/gpu.md writes it out."""

    bandwidth_gb_s: float = 320.0      # T4 memory bandwidth
    fp16_tflops: float = 65.0          # T4 tensor-core peak
    weight_gb: float = 1.14            # read per decode step: NF4 body 0.67 GB + 16-bit output head 0.47 GB
    kv_bytes_per_token: float = 28_672.0  # 28 layers x (K, V) x 2 heads x 128 x 2 bytes
    params: float = 1.78e9             # FLOPs per token per forward = 2 x params
    bandwidth_share: float = 0.6       # achieved share of the bandwidth
    launch_overhead_s: float = 0.020   # per decode step, Unsloth's fast forward (transformers + bnb: ~0.035)
    utilisation: float = 0.25          # of the fp16 peak while training through 4-bit weights
    prompt_tokens: float = 150.0       # a GSM8K prompt in the chat template
    short_answer_tokens: float = 300.0  # decode steps of a batch of direct answers

    def decode_step_seconds(self, batch: int, context: float) -> float:
        """One decode step of ``batch`` answers at a mean ``context``: the weights once, every answer's KV cache."""
        read = self.weight_gb * 1e9 + batch * context * self.kv_bytes_per_token
        return read / (self.bandwidth_gb_s * 1e9 * self.bandwidth_share) + self.launch_overhead_s

    def train_seconds(self, tokens: float, forwards: float) -> float:
        """``tokens`` trained at ``forwards`` forward-equivalents each (forward, backward ~1, checkpointing's
        recompute, the KL reference's forward)."""
        return tokens * forwards * 2 * self.params / (self.fp16_tflops * 1e12 * self.utilisation)


def stage_seconds(cfg, model: CostModel = CostModel()) -> dict[str, float]:
    """Estimated seconds of each stage of ``cfg`` (a RunConfig) on the model's card: warm-up, DeGRPO, evaluation.

    Assumed lengths (docs/gpu.md): a warm-up example is ~80% of ``warmup.data.max_completion_tokens`` (kept
    examples are those that fit) plus its prompt; an RL step decodes to the cap (the longest of its answers) and
    trains answers of ~47% of the cap (half think, half short); evaluation decodes every batch to the cap in
    ``think`` and ``auto`` and ~300 tokens in ``short``."""
    warm, rl, ev = cfg.warmup.trl, cfg.rl.trl, cfg.eval
    example = 0.8 * (cfg.warmup.data.max_completion_tokens or 1250) + model.prompt_tokens
    examples = warm["per_device_train_batch_size"] * warm["gradient_accumulation_steps"]
    warmup = max(warm["max_steps"], 0) * model.train_seconds(examples * example, forwards=3)

    cap = rl["max_completion_length"]
    answers = cfg.rl.prompts_per_step * rl["num_generations"]
    decode = cap * model.decode_step_seconds(answers, model.prompt_tokens + cap / 2)
    train = model.train_seconds(answers * (model.prompt_tokens + 0.47 * cap), forwards=4 if rl["beta"] > 0 else 3)
    rl_seconds = max(rl["max_steps"], 0) * (decode + train + 2.0)

    questions = ev.limit or ev.per_level * 8
    batches = math.ceil(questions * ev.num_samples / ev.batch_size)
    per_mode = {mode: batches * steps * model.decode_step_seconds(ev.batch_size, model.prompt_tokens + steps / 2)
                for mode, steps in (("think", ev.max_new_tokens), ("auto", ev.max_new_tokens),
                                    ("short", min(ev.max_new_tokens, model.short_answer_tokens)))}
    evaluation = len(ev.benchmarks) * sum(per_mode[mode] for mode in ev.modes if mode in per_mode)
    return {"warmup": warmup, "rl": rl_seconds, "eval": evaluation}


def pipeline_left(stage: str, measured_step: float, steps_left: int, estimated: dict[str, float],
                  estimated_steps: int) -> tuple[float, float]:
    """(seconds left in ``stage``, seconds left in the whole pipeline): the stage from its measured step time,
    the later stages from their estimates scaled by measured / estimated step time of this one (a card, backend
    or model slower than the cost model's is slower everywhere)."""
    here = steps_left * measured_step
    per_step = estimated[stage] / max(estimated_steps, 1)
    scale = measured_step / per_step if per_step > 0 else 1.0
    later = sum(estimated[s] for s in STAGES[STAGES.index(stage) + 1:]) * scale
    return here, here + later


class PipelineEtaCallback(TrainerCallback):
    """After a stage's first ``first_steps`` optimizer steps, print its time left and the whole pipeline's
    (estimated: :func:`pipeline_left`). Steps a resumed run skipped are not timed."""

    def __init__(self, stage: str, estimated: dict[str, float], first_steps: int = 3, out=print):
        self.stage, self.estimated, self.first_steps, self.out = stage, estimated, first_steps, out
        self._start: tuple[int, float] | None = None
        self.reported: tuple[float, float] | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._start is None:
            self._start = (state.global_step, time.time())

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is None or self.reported is not None or not state.is_world_process_zero:
            return
        done = state.global_step - self._start[0]
        if done < self.first_steps:
            return
        measured = (time.time() - self._start[1]) / done
        self.reported = pipeline_left(self.stage, measured, state.max_steps - state.global_step, self.estimated,
                                      state.max_steps)
        here, total = self.reported
        self.out(f"{self.stage}: {measured:.1f} s a step over {done} steps; ~{here / 60:.0f} min left in this stage, "
                 f"~{total / 60:.0f} min for the whole pipeline (the later stages estimated from docs/gpu.md's cost "
                 f"model, scaled by this stage's measured / estimated step time)")
