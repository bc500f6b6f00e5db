"""Stage 1, warm-up distillation: teach a reasoning model both answer styles behind control tokens.

    thinkless-lite warmup --config mini

Builds hybrid SFT data (mini-world teachers, a paired dataset, or two teacher models run here),
then trains a QLoRA adapter with TRL's SFTTrainer on completions only. Writes
``<run>/warmup/{adapter/, resolved.yaml, metrics.jsonl, data_report.txt}``; a rerun resumes from the
last complete checkpoint. Departure from the paper: LoRA adapters on a 4-bit base instead of full
fine-tuning, so only the adapter and the new control-token rows train.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from thinkless_lite.callbacks import (CheckpointCompleteCallback, MetricsJsonlCallback, NonFiniteLossCallback,
                                      align_metrics_with_checkpoint, explain_out_of_memory, last_complete_checkpoint,
                                      read_metrics)
from thinkless_lite.config import RunConfig, save_resolved, trl_arguments
from thinkless_lite.data.hybrid import (WarmupDataError, build_sft_examples, generated_responses, miniworld_responses,
                                        responses_from_columns)
from thinkless_lite.estimates import PipelineEtaCallback, stage_seconds
from thinkless_lite.model import load_model, precision_flags, save_adapter
from thinkless_lite.vocabulary import load_tokenizer
from thinkless_lite.stages.setup import new_folder, prepare_stage
from thinkless_lite.teachers import generate_teacher_file

log = logging.getLogger("thinkless_lite")


def teacher_responses(cfg: RunConfig, stage_dir: Path):
    """The configured source -> teacher responses (both styles per question where available)."""
    data = cfg.warmup.data
    tokens = cfg.model.control_tokens
    if data.source == "miniworld":
        return miniworld_responses(cfg.miniworld, data.num_examples)
    if not data.path:
        raise WarmupDataError(f"warmup.data.source={data.source} needs warmup.data.path (hub dataset id or local file)")
    from thinkless_lite.data.files import load_rows

    rows = load_rows(data.path, split=data.split, config=data.hub_config)
    if data.source == "paired":
        return responses_from_columns(rows, question_column=data.question_column, answer_column=data.answer_column,
                                      long_column=data.long_column, short_column=data.short_column,
                                      response_column=data.response_column, tokens=tokens)
    # generate: run both teachers over the questions, resumably, then read their answers back.
    if not (data.reasoning_model and data.instruct_model):
        raise WarmupDataError("warmup.data.source=generate needs warmup.data.reasoning_model and instruct_model")
    if data.question_column not in rows.column_names:
        raise WarmupDataError(f"warmup.data.question_column={data.question_column!r} is not a column; "
                              f"the data has: {', '.join(sorted(rows.column_names))}")
    rows = [r for r in rows if isinstance(r.get(data.question_column), str)][: data.num_examples]
    questions = [r[data.question_column] for r in rows]
    golds = [None if r.get(data.answer_column) is None else str(r[data.answer_column]) for r in rows] \
        if data.answer_column else [None] * len(rows)
    target = Path(data.generated_file or stage_dir / "teacher_responses.jsonl")
    generate_teacher_file(data.reasoning_model, questions, target, role="long", batch_size=data.generation_batch_size,
                          max_new_tokens=data.max_new_tokens_long, seed=cfg.seed, system_prompt=cfg.model.system_prompt)
    generate_teacher_file(data.instruct_model, questions, target, role="short", batch_size=data.generation_batch_size,
                          max_new_tokens=data.max_new_tokens_short, seed=cfg.seed, system_prompt=cfg.model.system_prompt,
                          instruction=data.short_instruction)
    return generated_responses(questions, golds, target, tokens)


def sft_config(cfg: RunConfig, output_dir: Path):
    """TRL's SFTConfig for this recipe: the ``warmup`` section's TRL fields over the stage's defaults."""
    from trl import SFTConfig

    defaults = dict(seed=cfg.seed, data_seed=cfg.seed, report_to="none", dataloader_num_workers=0,
                    disable_tqdm=False, logging_first_step=True, dataset_num_proc=None,
                    **precision_flags(cfg.model.dtype))
    # The stage's own TRL fields (WarmupConfig.STAGE_SETS says why; a recipe cannot set them).
    fixed = dict(completion_only_loss=True, max_length=cfg.model.max_seq_length, packing=False,
                 gradient_checkpointing=False)
    return SFTConfig(**{**trl_arguments(cfg.warmup, output_dir, defaults), **fixed})


def run_loss(rows: list[dict], *, resumed: bool, trainer_loss: float) -> float:
    """The run's mean training loss (what the Trainer logs as ``train_loss``).

    Uninterrupted, that is the Trainer's own figure. After a resume the Trainer sums only the resumed steps
    but divides by all of them, so the mean is taken from the log instead: each logged ``loss`` is the mean
    over the steps since the previous log, weighted here by how many steps that was.
    """
    if not resumed or not rows:
        return trainer_loss
    total, steps, previous = 0.0, 0, 0
    for row in sorted(rows, key=lambda r: r["step"]):
        span = max(row["step"] - previous, 1)
        total, steps, previous = total + row["loss"] * span, steps + span, row["step"]
    return total / steps


def main(cfg: RunConfig) -> dict:
    """Run the warm-up stage; returns a summary with the adapter path, steps, the run's loss and the last logged one."""
    from datasets import Dataset

    began = time.time()
    stage_dir = prepare_stage(cfg, "warmup")  # imports unsloth, if it will be used, before TRL
    checkpoints = stage_dir / "checkpoints"
    args = sft_config(cfg, checkpoints)  # a TRL key typo fails here, in seconds
    # Data first (it needs only the tokenizer): a bad column mapping fails before any model loads, and
    # teacher models never share memory with the student.
    tokenizer, _ = load_tokenizer(cfg.model)  # a refused tokenizer fails before the stage's folder exists
    with new_folder(stage_dir):  # a start refused on its data or model leaves no new folder behind
        responses = teacher_responses(cfg, stage_dir)
        data = cfg.warmup.data
        examples, report = build_sft_examples(
            responses, tokenizer, num_examples=data.num_examples, short_share=data.short_share, seed=cfg.seed,
            max_completion_tokens=data.max_completion_tokens, require_correct=data.require_correct,
            tokens=cfg.model.control_tokens, system_prompt=cfg.model.system_prompt)
        print(f"warm-up data: {report}")
        loaded = load_model(cfg.model, trainable=True, seed=cfg.seed)
        from thinkless_lite.trainers import PortableSFTTrainer  # after the model: unsloth rewrites TRL first

        dataset = Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in examples])
        trainer = PortableSFTTrainer(
            model=loaded.model, args=args, train_dataset=dataset,
            processing_class=loaded.tokenizer,
            callbacks=[CheckpointCompleteCallback(), NonFiniteLossCallback(), MetricsJsonlCallback(stage_dir / "metrics.jsonl"),
                       PipelineEtaCallback("warmup", stage_seconds(cfg))])
        # Written once the data, the model and the trainer are ready: a start that fails leaves the run as it was.
        save_resolved(cfg, stage_dir)
        (stage_dir / "data_report.txt").write_text(str(report) + "\n")
    resume = last_complete_checkpoint(checkpoints)
    align_metrics_with_checkpoint(stage_dir / "metrics.jsonl", resume)
    if resume:
        print(f"resuming warm-up from {resume}")
    with explain_out_of_memory("warmup.per_device_train_batch_size (raise gradient_accumulation_steps to keep the "
                               "effective batch) or model.max_seq_length"):
        result = trainer.train(resume_from_checkpoint=resume)
    adapter_dir = save_adapter(loaded, stage_dir / "adapter")
    rows = [row for row in read_metrics(stage_dir / "metrics.jsonl") if isinstance(row.get("loss"), (int, float))]
    summary = {"adapter": str(adapter_dir), "steps": trainer.state.global_step,
               "train_loss": run_loss(rows, resumed=resume is not None, trainer_loss=result.training_loss),
               "final_loss": rows[-1]["loss"] if rows else result.training_loss,
               "examples": len(examples), "seconds": round(time.time() - began, 1), "backend": loaded.backend.name,
               "resumed_from": resume}
    log.info("warm-up done: %s", summary)
    return summary
