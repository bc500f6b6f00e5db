"""One run of the GPU check in its own process: ``python -m benchmarks.gpu.worker SPEC.json``.

A process per (shape, backend) because ``import unsloth`` patches transformers and TRL for the whole
process (an hf run after it would not measure hf, and DeGRPOTrainer would refuse it), and because each
run then has its own peak-memory counters. The backend is chosen first, as the ``thinkless-lite`` CLI
does: ``select_backend("unsloth")`` imports Unsloth before anything imports transformers or TRL. Whatever
happens is written to the spec's result file (``ok``, ``skipped`` with the reason, ``oom``, ``error``
with the traceback); the parent never has to parse a crash.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run by path: make `benchmarks.gpu` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

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
    rl = dataclasses.replace(
        cfg.rl, num_generations=spec["generations"], prompts_per_step=spec["prompts"], max_completion_length=c,
        gradient_accumulation_steps=spec["grad_accum"], max_steps=spec["steps"], save_steps=10**6,
        report_to=[], trl={**cfg.rl.trl, **overrides})
    if spec["task"] == "verify":
        rl = dataclasses.replace(rl, beta=0.0, gradient_accumulation_steps=1, alpha=spec["verify_alpha"],
                                 decoupled=True)
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
    return loaded


def describe_trainer(trainer, record: dict) -> None:
    from thinkless_lite.compat import trainer_flavour

    record["trainer_flavour"] = trainer_flavour(type(trainer))  # "unsloth": Unsloth's GRPOTrainer is the base
    record["trainer_mro"] = [f"{c.__module__}.{c.__qualname__}" for c in type(trainer).__mro__[:4]]
    record["adapter_dtypes"] = sorted({str(p.dtype).replace("torch.", "")
                                       for p in trainer.model.parameters() if p.requires_grad})


def execute(spec: dict) -> dict:
    record: dict = {"shape": spec["shape"], "backend": spec["backend"], "task": spec["task"]}
    try:
        import torch

        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        record["device"] = device_info()
        if spec["task"] == "build":
            from benchmarks.gpu.shapes import build_checkpoint

            record.update(status="ok", checkpoint=build_checkpoint(spec["shape"], Path(spec["checkpoint"])))
            return record
        from thinkless_lite.model import select_backend

        try:  # imports unsloth now, before transformers and TRL, when the backend is unsloth
            select_backend(spec["backend"])
        except RuntimeError as err:
            record.update(status="skipped", reason=str(err))
            return record
        if spec["task"] == "bench":
            from benchmarks.gpu.bench import run
        else:
            from benchmarks.gpu.verify import run
        run(spec, record)
        record["status"] = "ok"
    except BaseException as err:  # noqa: BLE001 - report, never crash the whole check
        oom = type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()
        record.update(status="oom" if oom else "error", error=f"{type(err).__name__}: {err}"[:2000],
                      traceback=traceback.format_exc()[-4000:])
        try:
            import torch

            if torch.cuda.is_available():
                record["memory_at_error"] = {"peak_allocated_gb": round(torch.cuda.max_memory_allocated() / GB, 3),
                                             "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / GB, 3)}
        except Exception:  # noqa: BLE001, S110 - the error above is what the record is about
            pass
    return record


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    record = execute(spec)
    Path(spec["result"]).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
