"""Kill and resume: a stage killed with SIGKILL at a random step continues from its last complete checkpoint.

Both stages run as real ``thinkless-lite warmup|rl`` subprocesses on the CPU with one thread. Each test
runs the same command twice: once uninterrupted (the reference), once SIGKILLed at a random step after
at least one checkpoint and then started again with the *same* command. The resumed run must

* start from the newest checkpoint that carries the completion marker (a torn, newer checkpoint planted
  beside it is ignored and removed, never loaded),
* find that checkpoint whole: trainer_state.json at its step, optimizer.pt, scheduler.pt, rng_state.pth,
* log its first step right after the checkpoint step, so at most one checkpoint interval is trained again,
  and leave one metrics row per step,
* end where the uninterrupted run ends: same final loss and the same adapter weights.

Tolerance: 1e-6 (absolute) on every adapter tensor and on the final loss. On one CPU thread these runs are
deterministic, and a resume restores weights, AdamW moments, the LR schedule, the RNG streams and the
data order, so the two runs agree bit for bit (measured: 0.0); 1e-6 only leaves room for float32
summation order. Losing one piece of state costs orders of magnitude more, measured with these very
settings by deleting a file from the checkpoint before the resume: optimizer.pt or scheduler.pt 5e-2
(warm-up) and 2e-2 (RL); rng_state.pth 7e-3 in RL (other samples are drawn) and nothing in the warm-up
(no dropout, a seeded sampler). So the bound cannot hide a lost state.

The kill step is random; its seed is printed and can be pinned with THINKLESS_KILL_SEED=<int>.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from thinkless_lite import callbacks
from thinkless_lite.stages import warmup
from thinkless_lite.callbacks import COMPLETE_MARKER, last_complete_checkpoint, read_metrics
from thinkless_lite.config import load_config

pytestmark = pytest.mark.slow

TOLERANCE = 1e-6
STAGE_TIMEOUT_S = 240


# ---------------------------------------------------------------- running the CLI

def cli() -> list[str]:
    """The installed ``thinkless-lite`` console script (same interpreter), else ``python -m thinkless_lite.cli``."""
    script = Path(sys.executable).with_name("thinkless-lite")
    return [str(script)] if script.exists() else [sys.executable, "-m", "thinkless_lite.cli"]


def stage_env() -> dict:
    """One thread, offline, CPU only (so the runs are deterministic wherever the suite runs)."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")


def command(stage: str, out: Path, settings: list[str]) -> list[str]:
    return [*cli(), stage, *[arg for s in settings for arg in ("--set", s)], "--out", str(out)]


def summary_of(stdout: str) -> dict:
    """The JSON summary the CLI prints last."""
    start = stdout.rfind("\n{\n") + 1 if "\n{\n" in stdout else stdout.find("{\n")
    return json.loads(stdout[start:])


def run_stage(cmd: list[str], log: Path) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, env=stage_env(), timeout=STAGE_TIMEOUT_S,
                          cwd=Path(__file__).resolve().parents[1])
    log.write_text(done.stdout + "\n----- stderr -----\n" + done.stderr)
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}); tail:\n{done.stderr[-3000:]}"
    return summary_of(done.stdout)


def logged_steps(metrics: Path) -> list[int]:
    """Steps of the training rows (the ones with a loss) in a metrics.jsonl."""
    return [row["step"] for row in read_metrics(metrics) if "loss" in row]


def run_and_kill(cmd: list[str], log: Path, metrics: Path, checkpoints: Path, kill_at: int) -> int:
    """Start ``cmd``; SIGKILL it once it logged step ``kill_at`` and has a complete checkpoint.

    Returns the last step it had logged when it died.
    """
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=stage_env(),
                                cwd=Path(__file__).resolve().parents[1])
        deadline = time.monotonic() + STAGE_TIMEOUT_S
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    steps = logged_steps(metrics)
                except (OSError, json.JSONDecodeError):  # a row being written right now
                    steps = []
                if steps and steps[-1] >= kill_at and last_complete_checkpoint(checkpoints, remove_incomplete=False):
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.01)
        finally:
            if proc.poll() is None and time.monotonic() >= deadline:
                proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (
        f"the run was meant to die by SIGKILL at step {kill_at} but exited with {proc.returncode}; "
        f"log tail:\n{log.read_text()[-3000:]}")
    return logged_steps(metrics)[-1]


def checkpoint_step(path: str | Path) -> int:
    return int(Path(path).name.split("-")[-1])


def plant_torn_checkpoint(good: Path, step: int) -> Path:
    """A newer checkpoint as a kill in the middle of saving leaves it: files cut in half, no marker."""
    torn = good.parent / f"checkpoint-{step}"
    shutil.copytree(good, torn)
    (torn / COMPLETE_MARKER).unlink()
    for name in ("adapter_model.safetensors", "optimizer.pt"):
        data = (torn / name).read_bytes()
        (torn / name).write_bytes(data[: len(data) // 2])
    state = json.loads((torn / "trainer_state.json").read_text())
    state["global_step"] = step
    (torn / "trainer_state.json").write_text(json.dumps(state))
    return torn


def kill_seed() -> int:
    seed = int(os.environ.get("THINKLESS_KILL_SEED", time.time_ns() % 1_000_000))
    print(f"kill seed: {seed} (rerun with THINKLESS_KILL_SEED={seed})")
    return seed


def assert_whole_checkpoint(folder: Path, step: int) -> None:
    assert (folder / COMPLETE_MARKER).read_text().strip() == str(step)
    assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == step
    for name in ("optimizer.pt", "scheduler.pt", "adapter_model.safetensors", "trainer_state.json"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    assert list(folder.glob("rng_state*.pth")), "no RNG state saved"


def max_adapter_difference(a: Path, b: Path) -> float:
    left, right = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert left.keys() == right.keys()
    for key in left:
        assert left[key].dtype == right[key].dtype, f"{key}: {left[key].dtype} vs {right[key].dtype}"
    return max((left[k].float() - right[k].float()).abs().max().item() for k in left)


def check_kill_and_resume(stage: str, settings: list[str], tmp_path: Path, *, save_steps: int, max_steps: int,
                          kill_range: tuple[int, int]) -> dict:
    """The whole scenario for one stage; returns numbers for the caller's stage-specific checks."""
    reference_out, killed_out = tmp_path / "reference", tmp_path / "killed"
    stage_dir = killed_out / stage
    metrics, checkpoints = stage_dir / "metrics.jsonl", stage_dir / "checkpoints"

    # The uninterrupted reference runs beside the killed run (two single-threaded processes).
    ref_out, ref_err = tmp_path / "reference.out", tmp_path / "reference.log"
    with ref_out.open("w") as out_sink, ref_err.open("w") as err_sink:
        reference = subprocess.Popen(command(stage, reference_out, settings), stdout=out_sink, stderr=err_sink,
                                     env=stage_env(), cwd=Path(__file__).resolve().parents[1])
        try:
            kill_at = random.Random(kill_seed()).randint(*kill_range)
            last_logged = run_and_kill(command(stage, killed_out, settings), tmp_path / "killed.log", metrics,
                                       checkpoints, kill_at)
            reference.wait(timeout=STAGE_TIMEOUT_S)
        finally:
            if reference.poll() is None:
                reference.kill()
                reference.wait()
    assert reference.returncode == 0, ref_err.read_text()[-3000:]
    ref_summary = summary_of(ref_out.read_text())

    # What the kill left behind: a complete checkpoint, whole, and no more than one interval behind.
    good = Path(last_complete_checkpoint(checkpoints, remove_incomplete=False))
    good_step = checkpoint_step(good)
    assert good_step % save_steps == 0 and 0 < good_step <= last_logged
    assert_whole_checkpoint(good, good_step)
    assert last_logged - good_step <= save_steps, "more than one checkpoint interval would be trained again"
    torn = plant_torn_checkpoint(good, max_steps + 100)
    rows_before = len([s for s in logged_steps(metrics) if s <= good_step])

    # Resume: the very same command.
    resumed = run_stage(command(stage, killed_out, settings), tmp_path / "resumed.log")
    assert resumed["resumed_from"] == str(good), (resumed["resumed_from"], str(good))
    assert not torn.exists(), "a checkpoint without the marker must be removed, never loaded"
    assert resumed["steps"] == ref_summary["steps"] == max_steps
    steps = logged_steps(metrics)
    assert steps[rows_before] == good_step + 1, f"the resumed run logged {steps[rows_before:]} after {good_step}"
    assert steps == list(range(1, max_steps + 1)), f"one row per step expected, got {steps}"
    final = Path(last_complete_checkpoint(checkpoints, remove_incomplete=False))
    assert checkpoint_step(final) == max_steps
    assert_whole_checkpoint(final, max_steps)

    # Same end as the uninterrupted run.
    ref_rows = [r for r in read_metrics(reference_out / stage / "metrics.jsonl") if "loss" in r]
    rows = [r for r in read_metrics(metrics) if "loss" in r]
    assert abs(rows[-1]["loss"] - ref_rows[-1]["loss"]) <= TOLERANCE, (rows[-1]["loss"], ref_rows[-1]["loss"])
    difference = max_adapter_difference(stage_dir / "adapter", reference_out / stage / "adapter")
    print(f"{stage}: killed after step {last_logged}, resumed from {good_step}; "
          f"max |adapter difference| vs uninterrupted = {difference:.3g}")
    assert difference <= TOLERANCE
    return {"rows": rows, "ref_rows": ref_rows, "good_step": good_step, "summary": resumed,
            "ref_summary": ref_summary}


# ---------------------------------------------------------------- warm-up

def test_warmup_killed_at_a_random_step_resumes_from_the_last_complete_checkpoint(tiny_model_dir, tmp_path):
    save_steps, max_steps = 5, 50
    settings = [f"model.name_or_path={tiny_model_dir}", "model.backend=hf", "model.lora_r=4", "model.lora_alpha=8",
                "threads=1", f"warmup.max_steps={max_steps}", f"warmup.save_steps={save_steps}",
                "warmup.logging_steps=1", "warmup.data.num_examples=160", "warmup.per_device_train_batch_size=4"]
    out = check_kill_and_resume("warmup", settings, tmp_path, save_steps=save_steps, max_steps=max_steps,
                                kill_range=(save_steps + 1, max_steps - 2 * save_steps))
    assert abs(out["summary"]["train_loss"] - out["ref_summary"]["train_loss"]) <= TOLERANCE
    # The LR schedule went on where it stopped (cosine with warm-up: any restart would show here).
    assert [r["learning_rate"] for r in out["rows"]] == pytest.approx([r["learning_rate"] for r in out["ref_rows"]],
                                                                      abs=1e-12)


# ---------------------------------------------------------------- RL

@pytest.fixture(scope="module")
def short_answer_adapter(tmp_path_factory) -> Path:
    """A quick warm-up of the shipped mini-world base on direct answers only (~20 s).

    Afterwards every sample opens with ``<short>`` and a digit that is right about one time in ten, so
    RL groups have unequal rewards, the loss is not zero and the optimizer and RNG states matter for a resume.
    """
    out = tmp_path_factory.mktemp("warm")
    cfg = load_config(None, ["model.backend=hf", "model.lora_r=8", "model.lora_alpha=16", "threads=1",
                             "warmup.max_steps=30", "warmup.save_steps=1000", "warmup.logging_steps=10",
                             "warmup.learning_rate=0.01", "warmup.data.num_examples=480",
                             "warmup.data.short_share=1.0", "warmup.per_device_train_batch_size=16",
                             f"output_dir={out}", "name=warm"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = warmup.main(cfg)
    return Path(summary["adapter"])


def test_rl_killed_at_a_random_step_resumes_from_the_last_complete_checkpoint(short_answer_adapter, tmp_path):
    save_steps, max_steps = 2, 8
    settings = ["model.backend=hf", f"model.adapter_path={short_answer_adapter}", "threads=1",
                "miniworld.difficulty_weights={1: 1.0}", f"rl.max_steps={max_steps}", f"rl.save_steps={save_steps}",
                "rl.logging_steps=1", "rl.num_generations=8", "rl.prompts_per_step=2", "rl.max_completion_length=16",
                "rl.data.num_examples=64", "rl.beta=0.0", "rl.temperature=1.0", "rl.learning_rate=0.001"]
    out = check_kill_and_resume("rl", settings, tmp_path, save_steps=save_steps, max_steps=max_steps,
                                kill_range=(save_steps + 1, max_steps - 3))
    # Both sides of the checkpoint learned something (groups with unequal rewards), else the comparison is idle.
    for side in (lambda step: step <= out["good_step"], lambda step: step > out["good_step"]):
        assert any(r["grad_norm"] > 0 for r in out["ref_rows"] if side(r["step"])), [
            (r["step"], r["grad_norm"]) for r in out["ref_rows"]]
    for key in ("reward", "accuracy", "think_ratio", "format_error_rate"):
        assert [r[key] for r in out["rows"]] == pytest.approx([r[key] for r in out["ref_rows"]], abs=TOLERANCE), key
    assert out["summary"]["final"] == pytest.approx(out["ref_summary"]["final"], abs=TOLERANCE)


# ---------------------------------------------------------------- the window between two checkpoints

class Killed(BaseException):
    """Stands in for SIGKILL inside the process (nothing after it runs, no handler catches it)."""


def test_rotation_never_deletes_the_last_complete_checkpoint_first(tiny_model_dir, tmp_path, monkeypatch):
    """save_total_limit=1: the Trainer writes checkpoint-4 and rotates away checkpoint-2 before the marker.

    A kill in that window must still leave a complete checkpoint behind.
    """
    def cfg(max_steps):
        return load_config(None, [f"model.name_or_path={tiny_model_dir}", "model.backend=hf", "model.lora_r=4",
                                  "model.lora_alpha=8", f"warmup.max_steps={max_steps}", "warmup.save_steps=2",
                                  "warmup.save_total_limit=1", "warmup.data.num_examples=40",
                                  "warmup.per_device_train_batch_size=4", f"output_dir={tmp_path}", "name=rot",
                                  "threads=1"])

    original = callbacks.CheckpointCompleteCallback.on_save

    def killed_before_marking(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise Killed()  # checkpoint-4 is on disk, its marker is not
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(callbacks.CheckpointCompleteCallback, "on_save", killed_before_marking)
    with warnings.catch_warnings(), pytest.raises(Killed):
        warnings.simplefilter("ignore")
        warmup.main(cfg(6))
    checkpoints = tmp_path / "rot" / "warmup" / "checkpoints"
    assert (checkpoints / "checkpoint-4").is_dir() and not (checkpoints / "checkpoint-4" / COMPLETE_MARKER).exists()
    assert last_complete_checkpoint(checkpoints, remove_incomplete=False) == str(checkpoints / "checkpoint-2")

    monkeypatch.setattr(callbacks.CheckpointCompleteCallback, "on_save", original)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = warmup.main(cfg(6))
    assert summary["resumed_from"] == str(checkpoints / "checkpoint-2") and summary["steps"] == 6
    # the limit still holds once the newer checkpoint is complete
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-6"]
    assert_whole_checkpoint(checkpoints / "checkpoint-6", 6)
    assert torch.isfinite(torch.tensor(summary["train_loss"]))


def test_a_rerun_with_another_learning_rate_resumes_with_that_rate(tiny_model_dir, tmp_path, capsys):
    """A resume restores the checkpoint's optimizer and schedule; a changed learning rate must still apply."""
    def run(max_steps, learning_rate):
        cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", "model.backend=hf", "model.lora_r=4",
                                 "model.lora_alpha=8", f"warmup.max_steps={max_steps}", "warmup.save_steps=2",
                                 "warmup.logging_steps=1", f"warmup.learning_rate={learning_rate}",
                                 "warmup.lr_scheduler_type=constant", "warmup.data.num_examples=40",
                                 "warmup.per_device_train_batch_size=4", f"output_dir={tmp_path}", "name=lr",
                                 "threads=1"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return warmup.main(cfg)

    run(4, 2e-3)
    summary = run(8, 1e-4)
    assert summary["resumed_from"].endswith("checkpoint-4")
    assert "resumed with learning rate 0.0001 (the checkpoint was trained with 0.002)" in capsys.readouterr().out
    rows = [r for r in read_metrics(tmp_path / "lr" / "warmup" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["learning_rate"] for r in rows] == pytest.approx([2e-3] * 4 + [1e-4] * 4)
