"""benchmarks/gpu_step.py on CPU: the tiny shape runs the real DeGRPO step under hf; unsloth is skipped, not a crash.

The GPU numbers themselves need a CUDA machine (docs/gpu.md); here we check the plumbing: one worker
process per backend, forced lengths, per-token (B, T) advantages reaching the loss, and the JSON and
Markdown reports (fields, skip reasons, targets left "n/a" off a GPU, the loss check in --verify-loss).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_step.py"


@pytest.fixture(scope="module")
def gpu_step():
    spec = importlib.util.spec_from_file_location("gpu_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One checkpoint folder shared by both runs (the script reuses a built checkpoint)."""
    return tmp_path_factory.mktemp("gpu_step")


SMALL = ["--tiny", "--device", "cpu", "--threads", "1", "--prompt-len", "12", "--completion-len", "6",
         "--generations", "4"]


def test_shapes_are_the_real_qwen2_numbers(gpu_step):
    small, large = gpu_step.SHAPES["1.5b"], gpu_step.SHAPES["7b"]
    assert (small["hidden_size"], small["intermediate_size"], small["num_hidden_layers"],
            small["num_attention_heads"], small["num_key_value_heads"]) == (1536, 8960, 28, 12, 2)
    assert (large["hidden_size"], large["intermediate_size"], large["num_hidden_layers"],
            large["num_attention_heads"], large["num_key_value_heads"]) == (3584, 18944, 28, 28, 4)
    for shape, tied in ((small, True), (large, False)):
        assert shape["vocab_size"] == 151936 and shape["tie_word_embeddings"] is tied
        assert shape["rope_theta"] == 1e6 and shape["max_position_embeddings"] == 32768
    # Parameter counts of the hub models (model cards): 1.54B and 7.61B.
    assert round(gpu_step._count_params(small) / 1e9, 2) == 1.54
    assert round(gpu_step._count_params(large) / 1e9, 2) == 7.61


def test_cpu_bench_reports_hf_and_skips_unsloth(gpu_step, work, tmp_path):
    out = tmp_path / "bench.json"
    rc = gpu_step.main(SMALL + ["--backends", "hf,unsloth,unsloth-first", "--steps", "1", "--out", str(out),
                                "--work-dir", str(work), "--keep-work"])
    results = json.loads(out.read_text())
    runs = {r["backend"]: r for r in results["runs"]}
    assert rc == 0, runs["hf"].get("error") or runs["hf"].get("log_tail")

    assert results["settings"]["device"] == "cpu" and results["settings"]["mode"] == "bench"
    for key in ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth", "unsloth_zoo"):
        assert key in results["versions"] and key in results["expected_versions"]
    assert results["device"]["name"].startswith("CPU")
    built = results["checkpoints"]["tiny"]
    assert built["parameters"] == gpu_step._count_params(gpu_step.SHAPES["tiny"])  # the formula counts a real model

    for backend in ("unsloth", "unsloth-first"):
        assert runs[backend]["status"] == "skipped"
        assert "CUDA" in runs[backend]["reason"]

    hf = runs["hf"]
    assert hf["status"] == "ok", hf
    assert hf["backend_chosen"]["name"] == "hf" and hf["unsloth_trainer_in_mro"] is False
    assert hf["trainer_mro"][0] == "thinkless_lite.trainer.DeGRPOTrainer"
    step = hf["steps"][0]
    for key in ("step_s", "generate_s", "rollout_s", "update_s", "peak_rss_gb", "generated_tokens"):
        assert isinstance(step[key], (int, float)) and step[key] > 0, key
    # Forced lengths: every completion is exactly --completion-len tokens; prompts exactly --prompt-len.
    assert hf["forced_lengths_ok"] is True
    assert step["completion_len_min"] == step["completion_len_max"] == 6
    assert step["generated_tokens"] == 4 * 6 and step["prompt_tokens"] == 4 * 12
    # DeGRPO hands TRL's loss per-token advantages of shape (B, T).
    assert step["advantages_shape"] == [4, 6]
    summary = hf["summary"]
    for key in ("step_s", "generate_s", "update_s", "generation_tokens_per_s", "update_tokens_per_s"):
        assert summary[key] > 0, key
    assert "peak_rss_gb" in hf["peak"] and "peak_allocated_gb" not in hf["peak"]  # no GPU counters on CPU
    assert hf["grpo"]["loss_type"] == "dapo" and hf["gradient_checkpointing"] is True  # the T4 recipe's settings
    assert hf["generation_in_train_mode_with_checkpointing"] is True  # flagged, see docs/gpu.md

    assert results["targets"], "speed targets are listed even when they cannot be assessed"
    assert all(t["status"] == "n/a" for t in results["targets"])

    md = out.with_suffix(".md").read_text()
    assert "| shape | backend | status | peak reserved GB | peak allocated GB | load peak reserved GB" in md
    assert "| tiny | hf | ok |" in md
    assert "| tiny | unsloth | skipped: no CUDA GPU" in md
    assert "torch " in md and "transformers 5.17.0" in md
    assert "Not measured yet: no GPU was available in the session that built this script." in md


def test_cpu_verify_loss_checks_hf_and_skips_unsloth(gpu_step, work, tmp_path):
    """In this process (--in-process) to stay fast; the bench test above covers the worker processes."""
    out = tmp_path / "verify.json"
    rc = gpu_step.main(SMALL + ["--verify-loss", "--in-process", "--out", str(out), "--work-dir", str(work),
                                "--keep-work"])
    results = json.loads(out.read_text())
    runs = {r["backend"]: r for r in results["runs"]}
    assert rc == 0, [c for c in results.get("checks", []) if c["status"] != "PASS"] or runs["hf"]
    assert results["settings"]["mode"] == "verify-loss"
    assert runs["unsloth"]["status"] == "skipped" and "CUDA" in runs["unsloth"]["reason"]
    hf = runs["hf"]
    assert hf["status"] == "ok"
    assert hf["loss"] == pytest.approx(hf["expected_loss_bt"], abs=1e-5)
    # The check is sensitive: collapsing the advantages to one per sequence gives another loss.
    assert abs(hf["expected_loss_bt"] - hf["expected_loss_if_per_sequence"]) > 1e-3
    assert hf["loss_with_per_sequence_advantages"] == pytest.approx(hf["expected_loss_if_per_sequence"], abs=1e-5)
    assert hf["grad_tensors"] > 0 and hf["zero_grad_tensors"] == 0 and not hf["missing_grad_tensors"]
    checks = {c["check"]: c for c in results["checks"]}
    assert checks["tiny/hf: loss == closed form with (B, T) advantages"]["status"] == "PASS"
    assert checks["tiny/hf: trainer gradients == degrpo_loss reference gradients"]["status"] == "PASS"
    assert checks["tiny/unsloth"]["status"] == "skipped"
    md = out.with_suffix(".md").read_text()
    assert "DeGRPO loss check" in md and "| tiny | unsloth | skipped" in md
