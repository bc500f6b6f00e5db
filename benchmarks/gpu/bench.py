"""The timed steps: ``--steps`` real ``DeGRPOTrainer.train()`` steps, configured by the package's own
``thinkless_lite.stages.rl.grpo_config``, so generation, reward, reference log-probs, DeGRPO's per-token
advantages, the loss (Unsloth's on ``unsloth``), backward and the optimizer step are all measured.

Spans come from wrapping this trainer instance's ``_generate_single_turn`` (generation),
``_generate_and_score_completions`` (rollout: generation + reward + log-probs) and a callback around each
optimizer step, with ``torch.cuda.synchronize()`` at every boundary; update = step - rollout. The first
``--warmup-steps`` (compilation, autotuning, allocator warm-up) are reported but left out of the medians.
``compute_loss`` is wrapped too, only to record each micro-batch's prompt lengths: the proof that the
batches the loss saw mixed different left padding.
"""

from __future__ import annotations

from benchmarks.gpu.common import median
from benchmarks.gpu.inputs import make_prompts
from benchmarks.gpu.loading import start_trainer


def _summary(steps: list[dict], spec: dict) -> tuple[list[dict], dict]:
    measured = steps[spec["warmup_steps"]:] if len(steps) > spec["warmup_steps"] else steps
    summary = {k: median(row.get(k) for row in measured) for k in ("step_s", "rollout_s", "generate_s", "update_s")}
    generated = median(row.get("generated_tokens") for row in measured)
    trained = median(row.get("prompt_tokens", 0) + row.get("completion_tokens", 0) for row in measured)
    summary["generation_tokens_per_s"] = generated / summary["generate_s"] if generated and summary["generate_s"] else None
    summary["update_tokens_per_s"] = trained / summary["update_s"] if trained and summary["update_s"] else None
    return measured, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}


def run(spec: dict, record: dict) -> None:
    from transformers import TrainerCallback

    def prompts_of(tokenizer):
        return make_prompts(tokenizer, spec["steps"] + 1, spec["prompts"], spec["prompt_len"], spec["seed"])

    clock, cfg, loaded, trainer = start_trainer(spec, record, prompts_of)
    args = trainer.args
    record["grpo"] = {k: getattr(args, k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                                     "steps_per_generation", "generation_batch_size", "beta",
                                                     "loss_type", "bf16", "fp16", "temperature", "learning_rate")}
    current: dict = {}
    steps: list[dict] = []
    generate, rollout, compute_loss = (trainer._generate_single_turn, trainer._generate_and_score_completions,
                                       trainer.compute_loss)

    def add(key: str, value) -> None:
        current[key] = current.get(key, 0) + value

    def timed_generate(*a, **k):
        began = clock.now()
        out = generate(*a, **k)
        add("generate_s", clock.now() - began)
        lengths = [len(ids) for ids in out[0]]
        add("generated_tokens", sum(lengths))
        current["completion_len_min"] = min(lengths + [current.get("completion_len_min", 10**9)])
        current["completion_len_max"] = max(lengths + [current.get("completion_len_max", 0)])
        return out

    def timed_rollout(*a, **k):
        began = clock.now()
        out = rollout(*a, **k)
        add("rollout_s", clock.now() - began)
        add("prompt_tokens", int(out["prompt_mask"].sum()))
        add("completion_tokens", int(out["completion_mask"].sum()))
        current["advantages_shape"] = list(out["advantages"].shape)
        return out

    def recorded_loss(model, inputs, *a, **k):
        current.setdefault("micro_batch_prompt_lengths", []).append(inputs["prompt_mask"].sum(1).tolist())
        return compute_loss(model, inputs, *a, **k)

    trainer._generate_single_turn, trainer._generate_and_score_completions = timed_generate, timed_rollout
    trainer.compute_loss = recorded_loss

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            current.clear()
            clock.reset_peak()
            current["_began"] = clock.now()

        def on_step_end(self, args, state, control, **kwargs):
            step_s = clock.now() - current.pop("_began")
            row = {"step": state.global_step, "step_s": round(step_s, 4), **clock.peaks()}
            row.update({k: round(v, 4) if isinstance(v, float) else v for k, v in current.items()})
            if "rollout_s" in current:
                row["update_s"] = round(step_s - current["rollout_s"], 4)
            steps.append(row)
            shown = {k: v for k, v in row.items() if k != "micro_batch_prompt_lengths"}
            print(f"[gpu_step] {spec['shape']}/{spec['backend']} step {state.global_step}: {shown}", flush=True)

    trainer.add_callback(StepClock())
    trainer.train()
    measured, summary = _summary(steps, spec)
    peak_keys = [k for k in ("peak_allocated_gb", "peak_reserved_gb", "peak_rss_gb") if any(k in r for r in steps)]
    batches = [b for row in steps for b in row.get("micro_batch_prompt_lengths", [])]
    record.update(
        steps=steps, measured_steps=[row["step"] for row in measured], summary=summary,
        losses=[row["loss"] for row in trainer.state.log_history if "loss" in row],
        peak={k: max(row.get(k) or 0 for row in steps) for k in peak_keys},
        prompt_lengths=sorted({n for b in batches for n in b}),
        mixed_micro_batches=sum(len(set(b)) > 1 for b in batches), micro_batches=len(batches),
        forced_lengths_ok=all(row.get("completion_len_min") == row.get("completion_len_max") == spec["completion_len"]
                              for row in steps))
