"""The GPU check (benchmarks/gpu/, scripts/gpu_check.sh) on CPU: the tiny shape runs the real DeGRPO step and
the loss check under hf; unsloth is reported skipped with its reason, not a crash.

The GPU numbers need a CUDA machine (docs/gpu.md). Here: one worker process per backend, forced completion
lengths, prompts of mixed lengths reaching the loss's micro-batches, per-token (B, T) advantages, the loss
check's PASS against ``degrpo_loss`` (and that it can tell a wrong advantage layout), the verdict and target
logic on GPU-shaped records, the non-zero exit when nothing was proven, and the shell script's arguments.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks.gpu import cli, report
from benchmarks.gpu.common import NOT_MEASURED
from benchmarks.gpu.inputs import prompt_lengths
from benchmarks.gpu.shapes import SHAPES, count_params

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--tiny", "--device", "cpu", "--threads", "1", "--prompt-len", "12", "--completion-len", "6",
         "--generations", "4", "--prompts", "2"]


def test_shapes_are_the_real_qwen2_numbers():
    small, large = SHAPES["1.5b"], SHAPES["7b"]
    assert (small["hidden_size"], small["intermediate_size"], small["num_hidden_layers"],
            small["num_attention_heads"], small["num_key_value_heads"]) == (1536, 8960, 28, 12, 2)
    assert (large["hidden_size"], large["intermediate_size"], large["num_hidden_layers"],
            large["num_attention_heads"], large["num_key_value_heads"]) == (3584, 18944, 28, 28, 4)
    for shape, tied in ((small, False), (large, False)):  # R1-Distill-Qwen-1.5B's head is untied
        assert shape["vocab_size"] == 151936 and shape["tie_word_embeddings"] is tied
        assert shape["rope_theta"] == 1e6 and shape["max_position_embeddings"] == 32768
    # Parameter counts of the hub models (model cards): 1.78B (R1-Distill-Qwen-1.5B) and 7.61B.
    assert round(count_params(small) / 1e9, 2) == 1.78
    assert round(count_params(large) / 1e9, 2) == 7.61
    assert prompt_lengths(4, 256) == [256, 214, 171, 128] and prompt_lengths(1, 9) == [9]


def test_cpu_bench_runs_hf_with_mixed_prompts_and_skips_unsloth(tmp_path):
    out = tmp_path / "bench.json"
    rc = cli.main(SMALL + ["--grad-accum", "2", "--steps", "1", "--out", str(out), "--work-dir", str(tmp_path / "work")])
    results = json.loads(out.read_text())
    runs = {r["backend"]: r for r in results["runs"]}
    assert rc == 0, runs["hf"].get("error") or runs["hf"].get("log_tail")
    assert results["settings"]["mode"] == "bench" and results["settings"]["backends"] == ["hf", "unsloth"]
    for key in ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth", "unsloth_zoo"):
        assert key in results["versions"] and key in results["expected_versions"]
    assert results["checkpoints"]["tiny"]["checkpoint"]["parameters"] == count_params(SHAPES["tiny"])
    assert runs["unsloth"]["status"] == "skipped" and "CUDA" in runs["unsloth"]["reason"]

    hf = runs["hf"]
    assert hf["status"] == "ok", hf
    # The CLI's batch flags and the recipe's checkpointing reach TRL's trainer.
    assert hf["grpo"]["per_device_train_batch_size"] == 4 and hf["grpo"]["gradient_accumulation_steps"] == 2
    assert hf["gradient_checkpointing"] is True
    step = hf["steps"][0]
    for key in ("step_s", "generate_s", "rollout_s", "update_s", "peak_rss_gb"):
        assert step[key] > 0, key
    # Forced completions: exactly --completion-len tokens each.
    assert hf["forced_lengths_ok"] is True and step["completion_len_min"] == step["completion_len_max"] == 6
    assert step["generated_tokens"] == 8 * 6
    # Mixed prompts: the step's two prompts are 12 and 6 tokens, and the loss saw micro-batches mixing them.
    assert step["prompt_tokens"] == 4 * 12 + 4 * 6
    assert hf["prompt_lengths"] == [6, 12] and hf["micro_batches"] == 2
    assert any(len(set(batch)) > 1 for batch in step["micro_batch_prompt_lengths"])
    assert hf["mixed_micro_batches"] >= 1
    assert step["advantages_shape"] == [8, 6]  # DeGRPO hands TRL's loss per-token advantages (B, T)
    for key in ("step_s", "generate_s", "update_s", "generation_tokens_per_s", "update_tokens_per_s"):
        assert hf["summary"][key] > 0, key

    md = out.with_suffix(".md").read_text()
    assert "| shape | backend | status | peak reserved GB | peak allocated GB | load peak reserved GB" in md
    assert "| tiny | hf | ok |" in md and "| tiny | unsloth | skipped: no CUDA GPU" in md
    assert "BENCH tiny/hf: peak RSS" in md and NOT_MEASURED in md


def test_cpu_verify_loss_passes_against_degrpo_loss(tmp_path):
    """In this process (--in-process) to stay fast; the bench test above covers the worker processes."""
    out = tmp_path / "verify.json"
    rc = cli.main(SMALL + ["--verify-loss", "--in-process", "--out", str(out)])
    results = json.loads(out.read_text())
    runs = {r["backend"]: r for r in results["runs"]}
    checks = {c["check"]: c for c in results["checks"]}
    assert rc == 0 and results["verdict"] == "PASS", [c for c in results["checks"] if c["status"] == "FAIL"]
    assert runs["unsloth"]["status"] == "skipped" and checks["tiny/unsloth: ran"]["status"] == "skipped"
    hf = runs["hf"]
    lengths = hf["batch"]["prompt_lengths"]  # from the prompt mask the loss received
    assert lengths == prompt_lengths(8, 12) and len(set(lengths)) == 7 and (min(lengths), max(lengths)) == (6, 12)
    assert hf["loss"] == pytest.approx(hf["expected_loss_bt"], abs=1e-6)
    assert hf["reference"]["loss"] == pytest.approx(hf["expected_loss_bt"], abs=1e-6)
    assert hf["reference"]["cosine"] > 0.9999 and hf["reference"]["rel_l2"] < 1e-4
    # The same gradient comparison would catch advantages collapsed to one per sequence.
    assert hf["per_sequence_vs_bt"]["cosine"] < report.UNSLOTH_COSINE
    assert hf["loss_with_per_sequence_advantages"] == pytest.approx(hf["expected_loss_if_per_sequence"], abs=1e-6)
    for name in ("loss == closed form with (B, T) advantages", "loss == degrpo_loss on plain-forward log-probs",
                 "gradients == degrpo_loss gradients", "the gradient check tells (B, T) from (B,) advantages",
                 "prompts of mixed lengths", "every LoRA tensor and control row has a gradient",
                 "control rows trainable", "gradient accumulation (2 micro-batches) == one batch"):
        assert checks[f"tiny/hf: {name}"]["status"] == "PASS", name
    assert hf["accumulation"]["rel_l2"] < 1e-5 and hf["accumulation"]["loss_sum"] == pytest.approx(hf["loss"], abs=1e-6)
    assert len(hf["control_rows"]["tensors"]) == 1 and hf["control_rows"]["frozen"] == []  # tied: one row tensor
    md = out.with_suffix(".md").read_text()
    assert "LOSS CHECK: PASS (8 passed, 0 failed)" in md and "| tiny | unsloth | skipped" in md


def test_verify_exits_non_zero_when_nothing_was_checked(tmp_path):
    out = tmp_path / "verify.json"
    assert cli.main(SMALL + ["--verify-loss", "--backends", "unsloth", "--out", str(out)]) == 1
    assert json.loads(out.read_text())["verdict"] == "NOT RUN"


def _verify_record(tmp_path: Path, backend: str, grads: dict, **extra) -> dict:
    path = tmp_path / f"{backend}.pt"
    torch.save(grads, path)
    rows = {k: {"trainable": True, "dtype": "float32", "shape": [3, 4]} for k in grads if "trainable_tokens" in k}
    record = {"shape": "1.5b", "backend": backend, "status": "ok", "loss": 0.25, "expected_loss_bt": 0.25,
              "control_rows": {"tensors": rows, "frozen": []},
              "expected_loss_if_per_sequence": 0.2, "grad_tensors": len(grads), "zero_grad_names": [],
              "batch": {"prompt_lengths": [256, 200, 128]}, "grads_file": str(path),
              "accumulation": {"micro_batches": 2, "loss_sum": extra.get("loss", 0.25), "compared_tensors": len(grads),
                               "rel_l2": 1e-6, "cosine": 1.0}}
    return {**record, **extra}


def test_verdicts_and_targets_on_gpu_records(tmp_path):
    """The decisions a GPU run is judged by, on records shaped like a GPU run's."""
    torch.manual_seed(0)
    grads = {"a.lora_A.default.weight": torch.randn(4, 3), "a.lora_B.default.weight": torch.randn(3, 4),
             "model.embed_tokens.token_adapter.trainable_tokens_delta.default": torch.randn(3, 4),
             "lm_head.token_adapter.trainable_tokens_delta.default": torch.randn(3, 4)}
    hf = _verify_record(tmp_path, "hf", grads, reference={"loss": 0.25, "compared_tensors": 4, "rel_l2": 1e-3,
                                                        "cosine": 0.9999, "max_abs": 1e-4},
                        per_sequence_vs_bt={"cosine": 0.5, "rel_l2": 0.9})
    close = {k: v * 1.01 for k, v in grads.items()}
    results = {"settings": {"device": "cuda"}, "runs": [hf, _verify_record(tmp_path, "unsloth", close)]}
    assert report.verdict(report.verify_checks(results)) == "PASS"

    flipped = {k: -v for k, v in grads.items()}  # e.g. advantages landing on the wrong tokens
    results["runs"][1] = _verify_record(tmp_path, "unsloth", flipped)
    checks = report.verify_checks(results)
    assert report.verdict(checks) == "FAIL"
    assert [c["check"] for c in checks if c["status"] == "FAIL"] == ["1.5b/unsloth: gradients == hf's",
                                                                      "1.5b/unsloth: control-row gradients == hf's"]
    # A control row hf trains but unsloth does not (frozen there: no gradient saved) fails both comparisons.
    frozen_rows = {k: v for k, v in close.items() if not k.startswith("lm_head")}
    results["runs"][1] = _verify_record(tmp_path, "unsloth", frozen_rows)
    failed = [c for c in report.verify_checks(results) if c["status"] == "FAIL"]
    assert [c["check"] for c in failed] == ["1.5b/unsloth: gradients == hf's",
                                            "1.5b/unsloth: control-row gradients == hf's"]
    assert "lm_head.token_adapter.trainable_tokens_delta.default" in failed[0]["note"]
    # Micro-batches whose gradients do not add up to the one-batch ones (a per-micro-batch normaliser, say).
    results["runs"][1] = _verify_record(tmp_path, "unsloth", close, accumulation={
        "micro_batches": 2, "loss_sum": 0.5, "compared_tensors": 4, "rel_l2": 1.0, "cosine": 1.0})
    assert [c["check"] for c in report.verify_checks(results) if c["status"] == "FAIL"] == [
        "1.5b/unsloth: gradient accumulation (2 micro-batches) == one batch"]
    # Frozen control rows reported by the worker fail that backend's own check.
    results["runs"][1] = _verify_record(tmp_path, "unsloth", close,
                                        control_rows={"tensors": {}, "frozen": ["x.trainable_tokens_delta.default"]})
    assert "1.5b/unsloth: control rows trainable" in [c["check"] for c in report.verify_checks(results)
                                                      if c["status"] == "FAIL"]
    results["runs"][1] = _verify_record(tmp_path, "unsloth", close, loss=0.3)
    assert [c["check"] for c in report.verify_checks(results) if c["status"] == "FAIL"] == \
        ["1.5b/unsloth: loss == closed form with (B, T) advantages"]
    # A reference that could not be computed fails hf's two reference checks, not the unsloth comparison.
    results["runs"] = [{**hf, "reference": {"error": "RuntimeError: no logits"}},
                       _verify_record(tmp_path, "unsloth", close)]
    assert [c["check"] for c in report.verify_checks(results) if c["status"] == "FAIL"] == \
        ["1.5b/hf: loss == degrpo_loss on plain-forward log-probs", "1.5b/hf: gradients == degrpo_loss gradients"]
    # On a GPU a requested backend that could not run fails the check (on a CPU it is only skipped).
    results["runs"][1] = {"shape": "1.5b", "backend": "unsloth", "status": "skipped", "reason": "no unsloth"}
    assert report.verdict(report.verify_checks(results)) == "FAIL"

    def bench(backend, peak, step_s, status="ok"):
        return {"shape": "1.5b", "backend": backend, "status": status, "peak": {"peak_reserved_gb": peak},
                "summary": {"step_s": step_s}}

    rows = report.targets({"settings": {"device": "cuda"}, "runs": [bench("hf", 11.0, 3.0), bench("unsloth", 6.0, 1.5)]})
    assert [(r["target"], r["status"]) for r in rows] == [
        ("peak reserved GPU memory, 1.5b, hf", "MISS"), ("peak reserved GPU memory, 1.5b, unsloth", "PASS"),
        ("speed-up per step, 1.5b, unsloth vs hf", "PASS")]
    rows = report.targets({"settings": {"device": "cuda"}, "runs": [bench("hf", None, None, "oom"),
                                                                    bench("unsloth", 6.0, 2.9)]})
    assert [r["status"] for r in rows] == ["MISS", "PASS", "n/a"]


@pytest.mark.slow  # runs scripts/gpu_check.sh: a console script per part, about 90 s on 2 cores
def test_gpu_check_dry_run_runs_every_part_and_writes_at_most_four_files(tmp_path):
    """The prepared GPU call on CPU: parts (a)-(d) on tiny tied and untied shapes, one summary, <= 4 files."""
    import os
    import sys

    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, GPU_CHECK_WORK=str(tmp_path / "work"))
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                          env=env, check=False, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    summary = json.loads((tmp_path / "out" / "dry-run" / "gpu_check.json").read_text())
    parts = {p["part"][:3]: p for p in summary["parts"]}
    assert list(parts) == ["(a)", "(b)", "(c)", "(d)"]
    assert parts["(a)"]["verdict"] == "PASS" and parts["(b)"]["verdict"] == "PASS"
    assert parts["(b)"]["settings"]["shapes"] == ["tiny-untied"]  # the untied layout is loss-checked
    hf = next(r for r in parts["(b)"]["runs"] if r["backend"] == "hf")
    assert len(hf["control_rows"]["tensors"]) == 2  # embedding and head rows
    assert all(r["status"] == "ok" for p in ("(c)", "(d)") for r in parts[p]["runs"] if r["backend"] == "hf")
    assert not (tmp_path / "work").exists()


def test_the_gpu_package_has_no_import_cycle():
    """worker dispatches to smoke/bench/verify, which share loading; none of them imports worker."""
    import ast

    for name in ("loading", "smoke", "bench", "verify", "report", "inputs", "shapes", "common"):
        tree = ast.parse((REPO / "benchmarks" / "gpu" / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "benchmarks.gpu.worker" not in imported and "benchmarks.gpu.cli" not in imported, name


def test_gpu_check_script_parses_its_arguments():
    script = REPO / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    shown = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, check=False)
    assert shown.returncode == 0 and "--budget" in shown.stdout and "--dry-run" in shown.stdout
    assert subprocess.run(["bash", str(script), "--bogus"], capture_output=True, check=False).returncode == 2
    assert subprocess.run(["bash", str(script), "--budget", "soon"], capture_output=True, check=False).returncode == 2


def test_projections_scale_a_timed_step_to_the_recipe_and_to_a_t4():
    """A run on an H100 (3350 GB/s, 989 TFLOP/s): 10 s of generation and 2 s of update a step become 10 x 10.5
    + 2 x 15.2 s on a T4; the recipe's 100 steps give the stage's minutes on both."""
    run = {"shape": "1.5b", "backend": "unsloth", "status": "ok", "summary": {"step_s": 12.0, "generate_s": 10.0,
                                                                             "update_s": 2.0}}
    results = {"settings": {"rl_max_steps": 100}, "device": {"name": "NVIDIA H100 80GB HBM3"}, "runs": [run]}
    (line,) = report.projection_lines(results)
    t4_step = 10.0 * 3350 / 320 + 2.0 * 989 / 65
    assert line.startswith("PROJECTION 1.5b/unsloth: 12.0 s a step x 100 steps = 20 min of DeGRPO on NVIDIA H100")
    assert f"on a T4 ~{t4_step:.0f} s a step, ~{t4_step * 100 / 60:.0f} min" in line
    results["device"]["name"] = "Some Future GPU"
    assert "no T4 projection" in report.projection_lines(results)[0]
    assert report.projection_lines({**results, "settings": {}}) == []  # no step count: nothing to project
