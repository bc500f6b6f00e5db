"""Training safety shared by both stages: checkpoints you can trust, losses that stop when they rot,
metrics written where people can read them, and an out-of-memory error that says what to lower.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from pathlib import Path

from transformers import TrainerCallback

from thinkless_lite.jsonl import append_jsonl, read_jsonl, write_jsonl

COMPLETE_MARKER = "checkpoint_complete"


class CheckpointCompleteCallback(TrainerCallback):
    """Mark a checkpoint complete only after the Trainer finished writing it.

    A process killed mid-save leaves a folder without the marker; resume ignores (and removes) it,
    so a half-written checkpoint is never loaded. With several processes, every one of them has
    written its part (its RNG state, its optimizer shard) before process 0 writes the marker.

    Two more guarantees, both about what happens around the marker:

    * ``save_total_limit`` is enforced here, after the marker, instead of by the Trainer: the Trainer
      deletes old checkpoints while it is still saving the new one, so a kill in between (with a limit
      of 1) would leave no complete checkpoint at all.
    * A checkpoint whose trainable weights are not finite is never marked; training stops with
      :class:`NonFiniteLossError` and the last good checkpoint stays the one a rerun resumes from.

    And one about the resume itself: the checkpoint's optimizer and LR schedule come back with the
    learning rate they were saved with, so a rerun with a *different* ``learning_rate`` (lower, after a
    NaN) would silently keep the old one. The schedule is rescaled to the configured rate instead.
    """

    def __init__(self):
        self.save_total_limit: int | None = None

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if args.save_total_limit is not None:  # take the rotation over (see the class docstring)
            self.save_total_limit, args.save_total_limit = args.save_total_limit, None
        if state.global_step > 0:  # resumed: optimizer and schedule were just loaded from the checkpoint
            _apply_learning_rate(args.learning_rate, optimizer, lr_scheduler)
        return control

    def on_save(self, args, state, control, model=None, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        # A collective: it also waits until every process has finished writing its part of the checkpoint.
        if not _on_every_process(_trainable_weights_finite(model)):
            control.should_training_stop = True
            raise NonFiniteLossError(
                f"the weights stopped being finite before step {state.global_step}; {folder.name} is not marked "
                f"complete and training stopped. The last good checkpoint in {args.output_dir} is kept. {_NAN_ADVICE}")
        if state.is_world_process_zero and folder.is_dir():
            _fsync_files(folder)  # the marker must never reach the disk before the data it vouches for
            tmp = folder / (COMPLETE_MARKER + ".tmp")
            tmp.write_text(str(state.global_step))
            tmp.replace(folder / COMPLETE_MARKER)
            _fsync_files(folder, only_dir=True)
            if self.save_total_limit:
                _rotate(Path(args.output_dir), self.save_total_limit, keep=state.best_model_checkpoint)
        return control


def _apply_learning_rate(learning_rate: float, optimizer, lr_scheduler) -> None:
    """Rescale a loaded multiplicative schedule (every transformers scheduler but reduce_lr_on_plateau)
    so that its peak is ``learning_rate``; the optimizer's moments and the schedule's position stay."""
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's wrapper, if any
    base_lrs, factors = getattr(scheduler, "base_lrs", None), getattr(scheduler, "lr_lambdas", None)
    if optimizer is None or not base_lrs or not factors or len(set(base_lrs)) != 1:
        return
    if math.isclose(base_lrs[0], learning_rate, rel_tol=1e-9):
        return
    print(f"resumed with learning rate {learning_rate:g} (the checkpoint was trained with {base_lrs[0]:g})")
    scheduler.base_lrs = [learning_rate] * len(base_lrs)
    for group, factor in zip(optimizer.param_groups, factors):
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _trainable_weights_finite(model) -> bool:
    import torch

    if model is None:
        return True
    for param in model.parameters():
        if param.requires_grad:
            local = param.to_local() if hasattr(param, "to_local") else param  # FSDP2 shards: this process's part
            if not bool(torch.isfinite(local.detach()).all()):
                return False
    return True


def _on_every_process(flag: bool) -> bool:
    """``flag`` and-ed over all processes (itself when there is one)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    from accelerate import PartialState

    value = torch.tensor([1 if flag else 0], device=PartialState().device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def _fsync_files(folder: Path, only_dir: bool = False) -> None:
    paths = [] if only_dir else [p for p in folder.rglob("*") if p.is_file()]
    for path in paths + [folder]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _rotate(output_dir: Path, limit: int, keep: str | None = None) -> None:
    """Delete the oldest complete checkpoints beyond ``limit`` (never the newest, never ``keep``)."""
    complete = sorted((_step(p), p) for p in output_dir.glob("checkpoint-*")
                      if _step(p) is not None and (p / COMPLETE_MARKER).exists())
    excess = len(complete) - max(int(limit), 1)
    for _, folder in complete[:max(excess, 0)]:
        if keep is None or Path(keep).resolve() != folder.resolve():
            shutil.rmtree(folder, ignore_errors=True)


def _step(folder: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` folder; None for any other name."""
    try:
        return int(folder.name.split("-")[-1])
    except ValueError:
        return None


def last_complete_checkpoint(output_dir: str | Path, *, remove_incomplete: bool = True) -> str | None:
    """The newest checkpoint folder that carries the completion marker."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = []
    for folder in output_dir.glob("checkpoint-*"):
        step = _step(folder)
        if step is None:
            continue
        if (folder / COMPLETE_MARKER).exists():
            found.append((step, folder))
        elif remove_incomplete:
            shutil.rmtree(folder, ignore_errors=True)
    return str(max(found)[1]) if found else None


class NonFiniteLossError(RuntimeError):
    pass


_NAN_ADVICE = ("Lower the learning rate (warmup.learning_rate / rl.learning_rate) and run the same command again: "
               "it resumes from that checkpoint with the new rate. Also check the data for empty completions; on "
               "fp16 GPUs (T4) an overflowing forward pass gives inf: try a lower rate first.")


class NonFiniteLossCallback(TrainerCallback):
    """Stop at the first NaN/inf loss instead of saving a poisoned adapter over a good checkpoint.

    The Trainer's ``logging_nan_inf_filter`` (on by default) replaces a NaN step's loss in the log with
    the window's running mean, which hides exactly what this callback watches for (a NaN run then logs
    ``loss 0.0``), so it is switched off when training begins. ``train_loss`` (logged at the very end)
    covers NaN steps after the last regular log.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        args.logging_nan_inf_filter = False
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        loss = logs.get("loss", logs.get("train_loss"))
        if isinstance(loss, (int, float)) and not math.isfinite(loss):
            control.should_training_stop = True
            control.should_save = False
            raise NonFiniteLossError(
                f"loss became {loss} at step {state.global_step}; training stopped. The last good checkpoint "
                f"in {args.output_dir} is kept. {_NAN_ADVICE}")
        return control


class MetricsJsonlCallback(TrainerCallback):
    """Append every log dict (with its step) to a JSONL file: easy to plot, easy to diff."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return control
        append_jsonl(self.path, [{"step": state.global_step,
                                  **{k: v for k, v in logs.items() if isinstance(v, (int, float, str))}}])
        return control


@contextlib.contextmanager
def explain_out_of_memory(knobs: str):
    """Turn a CUDA OOM into a message that names the config knobs to lower."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError as err:
        raise RuntimeError(f"CUDA ran out of memory. Lower {knobs}, or turn on model.gradient_checkpointing. "
                           f"({err})") from err


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl; a last row cut short (the process was killed while writing it) is dropped."""
    return read_jsonl(path)


def align_metrics_with_checkpoint(path: str | Path, checkpoint: str | None) -> None:
    """A fresh run starts a fresh log; a resumed run keeps only the rows its checkpoint already covers.

    Steps after the checkpoint are trained again on resume, so their old rows would appear twice.
    """
    path = Path(path)
    if int(os.environ.get("RANK", "0")) != 0:  # several processes: only the one that writes the log touches it
        return
    if not path.exists():
        return
    if checkpoint is None:
        path.unlink(missing_ok=True)
        return
    step = _step(Path(checkpoint))
    write_jsonl(path, [row for row in read_metrics(path) if row.get("step", 0) <= step])
