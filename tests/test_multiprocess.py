"""Several processes: the RL stage under ``accelerate launch`` with two CPU processes (gloo), and the examples
in ``configs/accelerate/``.

Findings:

* ``accelerate launch --num_processes 2 --cpu`` starts ONE process. accelerate 1.15 hands ``--cpu`` (and
  ``distributed_type: MULTI_CPU``) to its simple launcher, which runs a single ``python`` unless an MPI
  hostfile is given; ``num_processes`` is ignored without a word. The torchrun-based MULTI_GPU launcher on
  a machine without CUDA starts both processes, and the Trainer's accelerate state becomes MULTI_CPU over
  gloo: that is ``configs/accelerate/cpu_2proc.yaml``. ``test_accelerate_cpu_flag_starts_a_single_process``
  pins the trap so an accelerate upgrade that changes it gets noticed.
* Resuming a two-CPU-process run fails upstream (device ``cpu:0`` as ``map_location``); it is a strict
  xfail below that counts only that failure (any other is a failure of ours). Two-GPU runs are not affected.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port
from thinkless_lite.callbacks import COMPLETE_MARKER, last_complete_checkpoint, read_metrics

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = REPO / "configs" / "accelerate"
ACCELERATE = Path(sys.executable).with_name("accelerate")
TIMEOUT_S = 300
# Logged by the RL stage at every step, whatever the model answers.
CORE_KEYS = {"step", "loss", "grad_norm", "learning_rate", "reward", "reward_std", "think_ratio", "accuracy",
             "format_error_rate", "groups_all_correct", "groups_all_wrong", "groups_dropped", "num_tokens",
             "completions/mean_length", "frac_reward_zero_std", "entropy", "epoch"}
# Means over think / short completions only: absent (NaN) at steps where no completion chose that mode; and TRL's
# per-sequence clip extremes, absent (NaN) at steps where every answer on every process was cut off at the cap
# and censored (the tiny model rarely ends within 8 tokens: no sequence has a token left to take a mean over).
PER_MODE_KEYS = {"accuracy_think", "accuracy_short", "tokens_think", "tokens_short", "clip_ratio/low_min",
                 "clip_ratio/high_max"}


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", MASTER_ADDR="127.0.0.1", PYTHONUNBUFFERED="1")


def launch(prefix: list[str], args: list[str], log: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([*prefix, *args], capture_output=True, text=True, env=env(), cwd=REPO, timeout=TIMEOUT_S)
    log.write_text(done.stdout + "\n----- stderr -----\n" + done.stderr)
    assert done.returncode == 0, f"{' '.join(prefix + args)} failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return done


def two_processes() -> list[str]:
    return [str(ACCELERATE), "launch", "--config_file", str(ACCELERATE_CONFIGS / "cpu_2proc.yaml"),
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), "-m", "thinkless_lite.cli"]


def rl_args(tiny_model_dir, out: Path, max_steps: int) -> list[str]:
    settings = [f"model.name_or_path={tiny_model_dir}", "model.backend=hf", "model.lora_r=4", "model.lora_alpha=8",
                "threads=1", f"rl.max_steps={max_steps}", "rl.save_steps=2", "rl.num_generations=4",
                "rl.prompts_per_step=2", "rl.max_completion_length=8", "rl.data.num_examples=32", "rl.beta=0.0"]
    return ["rl", *[a for s in settings for a in ("--set", s)], "--out", str(out)]


def training_rows(run: Path) -> list[dict]:
    return [row for row in read_metrics(run / "rl" / "metrics.jsonl") if "loss" in row]


def keys_of(rows: list[dict]) -> set[str]:
    return {key for row in rows for key in row} - PER_MODE_KEYS


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """The same 3-step RL run on one process and on two (gloo)."""
    root = tmp_path_factory.mktemp("multiprocess")
    one, two = root / "one", root / "two"
    launch([sys.executable, "-m", "thinkless_lite.cli"], rl_args(tiny_model_dir, one, 3), root / "one.log")
    launch(two_processes(), rl_args(tiny_model_dir, two, 3), root / "two.log")
    return {"one": one, "two": two, "root": root, "tiny": tiny_model_dir}


@pytest.mark.slow
def test_rl_on_two_cpu_processes_logs_what_one_process_logs(runs):
    one, two = runs["one"], runs["two"]
    # Two processes really ran: one RNG state per rank in the checkpoint, one summary per rank.
    checkpoint = Path(last_complete_checkpoint(two / "rl" / "checkpoints", remove_incomplete=False))
    assert checkpoint.name == "checkpoint-3" and (checkpoint / COMPLETE_MARKER).read_text() == "3"
    assert sorted(p.name for p in checkpoint.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert not list(checkpoint.glob("*.tmp"))
    assert (one / "rl" / "checkpoints" / "checkpoint-3" / "rng_state.pth").exists()
    assert (runs["root"] / "two.log").read_text().count('"resumed_from": null') == 2

    # The same metrics, logged once per step (by process 0 only).
    rows_one, rows_two = training_rows(one), training_rows(two)
    assert [r["step"] for r in rows_one] == [r["step"] for r in rows_two] == [1, 2, 3]
    for row in rows_one + rows_two:
        assert CORE_KEYS <= set(row), CORE_KEYS - set(row)
        assert 0.0 <= row["think_ratio"] <= 1.0 and 0.0 <= row["format_error_rate"] <= 1.0
    assert keys_of(rows_two) == keys_of(rows_one)
    assert (two / "rl" / "adapter" / "adapter_model.safetensors").exists()


class CpuZeroRestoreRefused(RuntimeError):
    """The known upstream failure: torch cannot restore a checkpoint to ``map_location=cpu:0``."""


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=CpuZeroRestoreRefused, reason=(
    "upstream: on MULTI_CPU accelerate sets the device to torch.device('cpu', 0); transformers 5.17 loads "
    "optimizer.pt with map_location=args.device when world_size > 1, and torch 2.13 cannot restore to 'cpu:0' "
    "(\"don't know how to restore data location ... (tagged with cpu:0)\"). GPU runs (cuda:N) are unaffected."))
def test_rl_on_two_cpu_processes_resumes(runs):
    two = runs["two"]
    checkpoint = last_complete_checkpoint(two / "rl" / "checkpoints", remove_incomplete=False)
    done = subprocess.run([*two_processes(), *rl_args(runs["tiny"], two, 4)], capture_output=True, text=True,
                          env=env(), cwd=REPO, timeout=TIMEOUT_S)
    (runs["root"] / "two_resumed.log").write_text(done.stdout + "\n----- stderr -----\n" + done.stderr)
    if done.returncode != 0 and "don't know how to restore data location" in done.stderr:
        raise CpuZeroRestoreRefused(done.stderr[-500:])
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.count(f'"resumed_from": "{checkpoint}"') == 2
    assert [r["step"] for r in training_rows(two)] == [1, 2, 3, 4]


# Each process writes its own file: two processes printing to one pipe interleave their lines (seen in CI).
PROBE = ("import sys; from pathlib import Path; from accelerate import PartialState; s = PartialState(cpu=True); "
         "Path(sys.argv[1], f'probe-{s.process_index}.txt').write_text("
         "' '.join(map(str, (s.distributed_type, s.num_processes, s.process_index, s.backend, s.device))))")


@pytest.mark.slow
def test_accelerate_cpu_flag_starts_a_single_process(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)

    def probes(name, *launch_args):
        out = tmp_path / name
        out.mkdir()
        done = subprocess.run([str(ACCELERATE), "launch", *launch_args, "--main_process_port", str(free_port()),
                               str(script), str(out)], capture_output=True, text=True, env=env(), timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return [path.read_text() for path in sorted(out.glob("probe-*.txt"))]

    assert probes("cpu_flag", "--cpu", "--num_processes", "2") == ["DistributedType.NO 1 0 None cpu"]
    assert probes("two_proc", "--config_file", str(ACCELERATE_CONFIGS / "cpu_2proc.yaml")) == [
        "DistributedType.MULTI_CPU 2 0 gloo cpu:0", "DistributedType.MULTI_CPU 2 1 gloo cpu:0"]


@pytest.mark.parametrize("name, distributed_type", [
    ("cpu_1proc.yaml", "NO"), ("cpu_2proc.yaml", "MULTI_GPU"), ("multi_gpu.yaml", "MULTI_GPU"),
    ("deepspeed_zero2.yaml", "DEEPSPEED"), ("fsdp.yaml", "FSDP"),
])
def test_accelerate_config_examples_load_and_name_only_known_options(name, distributed_type):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    path = ACCELERATE_CONFIGS / name
    config = load_config_from_file(str(path))  # unknown top-level keys raise here
    assert str(config.distributed_type).split(".")[-1] == distributed_type
    options = {action.dest for action in launch_command_parser()._actions}
    nested = {**config.deepspeed_config, **config.fsdp_config}
    assert set(nested) <= options, set(nested) - options
    text = path.read_text()
    assert "accelerate launch --config_file configs/accelerate/" + name in text.replace("\\\n", "")  # usage line
