"""Stage 2, DeGRPO: reinforcement learning that teaches the model when to think.

    thinkless-lite rl --config mini

Starts from the warm-up adapter (``<run>/warmup/adapter`` when present, or ``model.adapter_path``),
samples ``rl.num_generations`` answers per question, rewards them by mode and correctness
(+1 short right, +0.5 think right, -1 wrong), and updates the adapter with the decoupled loss.
Writes ``<run>/rl/{adapter/, metrics.jsonl, curves.png, resolved.yaml}``; reruns resume from the
last complete checkpoint. Departures from the paper: LoRA on a 4-bit base; on the mini-world alpha is
raised because completions are ~50 tokens rather than thousands (see configs/mini.yaml).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from thinkless_lite.callbacks import (CheckpointCompleteCallback, MetricsJsonlCallback, NonFiniteLossCallback,
                                      align_metrics_with_checkpoint, explain_out_of_memory, last_complete_checkpoint,
                                      read_metrics)
from thinkless_lite.config import ConfigError, RunConfig, censors_truncated, save_resolved, trl_arguments
from thinkless_lite.data.miniworld import MiniWorld
from thinkless_lite.estimates import PipelineEtaCallback, stage_seconds
from thinkless_lite.model import load_model, precision_flags, save_adapter
from thinkless_lite.report import plot_rl_curves
from thinkless_lite.rewards import ThinklessReward
from thinkless_lite.stages.setup import prepare_stage
from thinkless_lite.tokens import format_prompt

log = logging.getLogger("thinkless_lite")


def rl_items(cfg: RunConfig):
    """Training questions with gold answers, from the mini-world, the hub or a local file."""
    data = cfg.rl.data
    if data.source == "miniworld":
        return MiniWorld.of(cfg.miniworld).sample("train", data.num_examples, seed_offset=1)
    from thinkless_lite.data.files import ColumnMap, load_rows, rows_to_items
    from thinkless_lite.data.golds import GOLD_FORMATS

    if data.gold_format not in GOLD_FORMATS:  # here, not in config.validate: the config imports no data layer
        raise ConfigError(f"rl.data.gold_format must be one of {', '.join(GOLD_FORMATS)}; got {data.gold_format!r}")
    normalizer = GOLD_FORMATS[data.gold_format]
    rows = load_rows(data.source, split=data.split, config=data.hub_config)
    items, _ = rows_to_items(rows, ColumnMap(question=data.question_column, answer=data.answer_column),
                             source_name=data.source, gold_normalizer=normalizer, limit=data.num_examples)
    return items


def start_adapter(cfg: RunConfig) -> str | None:
    """Explicit model.adapter_path wins; else this run's warm-up adapter if it exists."""
    if cfg.model.adapter_path:
        return cfg.model.adapter_path
    warm = cfg.run_dir / "warmup" / "adapter"
    return str(warm) if (warm / "adapter_config.json").exists() else None


def grpo_config(cfg: RunConfig, output_dir: Path):
    """The trainer's arguments for this recipe, a :class:`~thinkless_lite.degrpo_config.DeGRPOConfig`: the ``rl``
    section's TRL fields over the stage's defaults, its DeGRPO settings (``censor_truncated`` resolved by
    :func:`censors_truncated`, with TRL's ``mask_truncated_completions`` to match), and the two things DeGRPO
    needs: token-sum (``dapo``) aggregation and a batch of whole groups per step."""
    import os

    from thinkless_lite.degrpo_config import DEGRPO_FIELDS, DeGRPOConfig

    defaults = dict(seed=cfg.seed, data_seed=cfg.seed, lr_scheduler_type="constant_with_warmup", warmup_steps=0,
                    log_completions=False, disable_tqdm=False, dataloader_num_workers=0, max_grad_norm=1.0,
                    **precision_flags(cfg.model.dtype))
    args = trl_arguments(cfg.rl, output_dir, defaults)
    generation_batch = cfg.rl.prompts_per_step * args["num_generations"]
    launched = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    world = int(os.environ.get("WORLD_SIZE", launched))
    accumulation = args["gradient_accumulation_steps"]  # always set: RLConfig.TRL_DEFAULTS
    if generation_batch % (world * accumulation):
        raise ConfigError(f"rl.prompts_per_step * rl.num_generations ({generation_batch}) must be divisible by "
                          f"processes x rl.gradient_accumulation_steps ({world} x {accumulation})")
    censor = censors_truncated(cfg)
    # The stage's own TRL fields (RLConfig.STAGE_SETS says why; a recipe cannot set them).
    args.update(per_device_train_batch_size=generation_batch // (world * accumulation),
                loss_type="dapo", gradient_checkpointing=False, mask_truncated_completions=censor)
    args["report_to"] = args["report_to"] or "none"
    degrpo = {name: getattr(cfg.rl, name) for name in DEGRPO_FIELDS}
    return DeGRPOConfig(**args, **{**degrpo, "censor_truncated": censor})


def make_trainer(cfg: RunConfig, loaded, items, args, trainer_class, callbacks=()):
    """The DeGRPO trainer of a recipe: its questions as TRL's dataset (prompt, gold answer, difficulty), the
    reward, and ``args`` (:func:`grpo_config`, which carries every ``rl`` setting). ``trainer_class`` is
    ``DeGRPOTrainer`` (imported by the caller after the model loaded) or a subclass of it, e.g.
    ``benchmarks/rl_step.py``'s timed one."""
    from datasets import Dataset

    tokens = cfg.model.control_tokens
    dataset = Dataset.from_list([{"prompt": format_prompt(loaded.tokenizer, it.question, cfg.model.system_prompt),
                                  "answer": it.gold, "difficulty": it.difficulty or 0} for it in items])
    recorder = ThinklessReward(cfg.rl.reward, tokens)
    return trainer_class(
        model=loaded.model, reward_funcs=[recorder], args=args, train_dataset=dataset,
        processing_class=loaded.tokenizer, recorder=recorder, backend=loaded.backend.name, control_tokens=tokens,
        callbacks=list(callbacks))


def main(cfg: RunConfig) -> dict:
    """Run DeGRPO; returns the adapter path, steps, wall time and the final training metrics."""
    began = time.time()
    stage_dir = prepare_stage(cfg, "rl")  # imports unsloth, if it will be used, before TRL
    adapter = start_adapter(cfg)
    model_cfg = dataclasses.replace(cfg.model, adapter_path=adapter)
    checkpoints = stage_dir / "checkpoints"
    args = grpo_config(cfg, checkpoints)  # a TRL key typo fails here, in seconds
    items = rl_items(cfg)  # before the model: bad data fails in seconds, not after a multi-GB load
    loaded = load_model(model_cfg, trainable=True, seed=cfg.seed)
    from thinkless_lite.trainers import DeGRPOTrainer  # after the model: unsloth rewrites TRL's trainer first

    print(f"RL from {'adapter ' + adapter if adapter else 'a fresh adapter'} ({loaded.backend.name} backend)")
    metrics_path = stage_dir / "metrics.jsonl"
    trainer = make_trainer(cfg, loaded, items, args, DeGRPOTrainer,
                           [CheckpointCompleteCallback(), NonFiniteLossCallback(), MetricsJsonlCallback(metrics_path),
                            PipelineEtaCallback("rl", stage_seconds(cfg))])
    # Written once the data, the model and the trainer are ready: a start that fails leaves the run as it was.
    save_resolved(dataclasses.replace(cfg, model=model_cfg), stage_dir)
    resume = last_complete_checkpoint(checkpoints)
    align_metrics_with_checkpoint(metrics_path, resume)
    if resume:
        print(f"resuming RL from {resume}")
    with explain_out_of_memory("rl.num_generations, rl.prompts_per_step, rl.max_completion_length "
                               "(or raise rl.gradient_accumulation_steps)"):
        trainer.train(resume_from_checkpoint=resume)
    adapter_dir = save_adapter(loaded, stage_dir / "adapter")
    rows = read_metrics(metrics_path)
    curves = plot_rl_curves(rows, stage_dir / "curves.png",
                            title=f"{'DeGRPO' if cfg.rl.decoupled else 'vanilla GRPO'} (alpha={cfg.rl.alpha:g})")
    final = {k: v for row in rows for k, v in row.items() if k in FINAL_KEYS}
    dropped = [row["groups_dropped"] for row in rows if isinstance(row.get("groups_dropped"), float)]
    if dropped and min(dropped) >= 1.0:
        log.warning("every group had equal rewards at every step, so nothing was learned: the model is always right "
                    "or always wrong (or never emits a control token) on these prompts. Check the warm-up, the data's "
                    "difficulty and rl.max_completion_length.")
    summary = {"adapter": str(adapter_dir), "steps": trainer.state.global_step, "curves": str(curves),
               "metrics": str(metrics_path), "seconds": round(time.time() - began, 1), "final": final,
               "resumed_from": resume, "decoupled": cfg.rl.decoupled}
    log.info("RL done: %s", summary)
    return summary


FINAL_KEYS = ("think_ratio", "p_think", "accuracy", "accuracy_think", "accuracy_short", "reward", "format_error_rate",
              "tokens_think", "tokens_short", "groups_all_correct", "groups_all_wrong", "clipped/think",
              "clipped/short", "kl", "loss")
