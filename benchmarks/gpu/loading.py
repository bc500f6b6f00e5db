"""What every worker task shares: timing and memory (``Clock``), the device, the run's recipe, loading the
model the way training does, and what the trainer turned out to be. Imported by ``worker``, ``smoke``,
``bench`` and ``verify``; it imports none of them (no import cycle)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from benchmarks.gpu.common import GB


class Clock:
    """Synchronised wall-clock spans and peak memory: GPU counters on CUDA, the process's peak RSS always."""

    def __init__(self):
        import torch

        self.torch, self.cuda = torch, torch.cuda.is_available()

    def now(self) -> float:
        if self.cuda:
            self.torch.cuda.synchronize()
        return time.perf_counter()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peaks(self) -> dict:
        import resource

        out = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, 3)}
        if self.cuda:
            out["peak_allocated_gb"] = round(self.torch.cuda.max_memory_allocated() / GB, 3)
            out["peak_reserved_gb"] = round(self.torch.cuda.max_memory_reserved() / GB, 3)
        return out


def device_info() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    info = {"cuda": cuda, "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(name=torch.cuda.get_device_name(0), total_memory_gb=round(props.total_memory / GB, 2),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    else:
        info["name"] = (f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                        f"{torch.get_num_threads()} torch threads)")
    return info


# The trainer as these jobs time it: the recipe's loss (alpha, decoupled, dropped groups) without the mode-choice
# rule (no forced modes, no threshold), which their group sizes need not support.
WITHOUT_MODE_CHOICE = dict(mode_balance=0.0, mode_balance_end=None, within_mode_advantages=False, mode_centering=0.0,
                           mode_threshold_lr=0.0, mode_ranking_gain_cap=1.0, control_rows_lr_scale=1.0)


def run_config(spec: dict):
    """The recipe of ``spec['config']`` with this run's checkpoint, backend, batch and forced lengths."""
    import dataclasses

    from thinkless_lite.config import load_config

    cfg = load_config(spec["config"])
    p, c = spec["prompt_len"], spec["completion_len"]
    checkpointing = cfg.model.gradient_checkpointing if spec.get("gradient_checkpointing") is None \
        else spec["gradient_checkpointing"]
    model = dataclasses.replace(cfg.model, name_or_path=spec["checkpoint"], backend=spec["backend"],
                                load_in_4bit=True, lora_r=16, adapter_path=None,
                                max_seq_length=max(cfg.model.max_seq_length, p + c + 8),
                                gradient_checkpointing=checkpointing)
    # min_new_tokens = max_completion_length: EOS cannot end a completion early, every one is exactly C tokens.
    overrides = {"generation_kwargs": {"min_new_tokens": c}, "save_strategy": "no", "logging_steps": 1,
                 "shuffle_dataset": False, "disable_tqdm": True}
    rl = cfg.rl.updated(num_generations=spec["generations"], prompts_per_step=spec["prompts"], max_completion_length=c,
                        gradient_accumulation_steps=spec["grad_accum"], max_steps=spec["steps"], save_steps=10**6,
                        report_to=[], **overrides, **WITHOUT_MODE_CHOICE)
    if spec["task"] == "verify":
        rl = rl.updated(beta=0.0, gradient_accumulation_steps=1, alpha=spec["verify_alpha"], decoupled=True)
    return dataclasses.replace(cfg, model=model, rl=rl, output_dir=spec["work_dir"], name="run", seed=spec["seed"])


def load(cfg, clock: Clock, record: dict):
    """``thinkless_lite.model.load_model`` as training loads it, timed, with the memory it took."""
    from thinkless_lite.model import load_model

    clock.reset_peak()
    began = clock.now()
    loaded = load_model(cfg.model, trainable=True, seed=cfg.seed)
    record.update(load_s=round(clock.now() - began, 3), load_memory=clock.peaks(),
                  backend_chosen={"name": loaded.backend.name, "reason": loaded.backend.reason},
                  trainable_parameters=sum(p.numel() for p in loaded.model.parameters() if p.requires_grad),
                  gradient_checkpointing=bool(getattr(loaded.model, "is_gradient_checkpointing", False)))
    record["control_rows"] = control_rows(loaded.model)
    return loaded


def start_trainer(spec: dict, record: dict, prompts_of):
    """What both GPU jobs start with: the spec's run config, its seed, the model (timed into ``record``) and a
    DeGRPO trainer on ``prompts_of(tokenizer)`` with the varied test reward. Returns (clock, cfg, loaded, trainer)."""
    from datasets import Dataset
    from transformers import set_seed

    from benchmarks.gpu.inputs import varied_reward
    from thinkless_lite.stages.rl import grpo_config
    from thinkless_lite.trainers import DeGRPOTrainer  # after select_backend: Unsloth's GRPOTrainer on unsloth

    clock = Clock()
    cfg = run_config(spec)
    set_seed(spec["seed"])
    loaded = load(cfg, clock, record)
    dataset = Dataset.from_list([{"prompt": p} for p in prompts_of(loaded.tokenizer)])
    args = grpo_config(cfg, Path(spec["work_dir"]) / "trainer")
    args.censor_truncated = False  # as these jobs have always run: TRL masks cut-off answers, the mode means keep them
    trainer = DeGRPOTrainer(model=loaded.model, reward_funcs=[varied_reward], args=args, train_dataset=dataset,
                            processing_class=loaded.tokenizer, backend=loaded.backend.name)
    describe_trainer(trainer, record)
    return clock, cfg, loaded, trainer


def control_rows(model) -> dict:
    """The control-row tensors (PEFT ``trainable_tokens_delta``) and whether they train, plus every tensor
    the recipe trains that is frozen (``thinkless_lite.control_rows.frozen_adapter_tensors``; must be empty)."""
    from thinkless_lite.control_rows import TRAINABLE_ROWS_PARAM, frozen_adapter_tensors

    rows = {n: {"trainable": p.requires_grad, "dtype": str(p.dtype).replace("torch.", ""), "shape": list(p.shape)}
            for n, p in model.named_parameters() if TRAINABLE_ROWS_PARAM in n and n.endswith(".default")}
    return {"tensors": rows, "frozen": frozen_adapter_tensors(model)}


def describe_trainer(trainer, record: dict) -> None:
    from thinkless_lite.compat import trainer_flavour

    record["trainer_flavour"] = trainer_flavour(type(trainer))  # "unsloth": Unsloth's GRPOTrainer is the base
    record["trainer_mro"] = [f"{c.__module__}.{c.__qualname__}" for c in type(trainer).__mro__[:4]]
    record["adapter_dtypes"] = sorted({str(p.dtype).replace("torch.", "")
                                       for p in trainer.model.parameters() if p.requires_grad})
