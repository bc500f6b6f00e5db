"""The T4 cost model (thinkless_lite.estimates) gives the figures docs/gpu.md and the T4 recipes quote, and the
pipeline's time left scales the later stages by the running stage's measured / estimated step time."""

import types

import pytest

from thinkless_lite.config import load_config
from thinkless_lite.estimates import CostModel, PipelineEtaCallback, pipeline_left, stage_seconds
from conftest import REPO

DEEPSCALER = ["rl.data.source=agentica-org/DeepScaleR-Preview-Dataset", "rl.data.hub_config=null",
              "rl.data.question_column=problem", "rl.data.gold_format=plain", "rl.max_completion_length=4096",
              "eval.max_new_tokens=4096", "model.max_seq_length=4608", "rl.gradient_accumulation_steps=16",
              "rl.max_steps=40"]


@pytest.mark.parametrize("recipe", ["r1_distill_1.5b_t4", "qwen2.5_1.5b_instruct_t4"])
def test_the_t4_recipes_fit_a_session_by_the_cost_model_docs_gpu_md_writes_out(recipe):
    cfg = load_config(REPO / "configs" / f"{recipe}.yaml")
    minutes = {stage: seconds / 60 for stage, seconds in stage_seconds(cfg).items()}
    assert minutes == pytest.approx({"warmup": 18, "rl": 96, "eval": 11}, abs=0.5)  # docs/gpu.md's table
    assert sum(minutes.values()) + 11 <= 150  # + install, downloads, loading: <= 2.5 h
    assert cfg.eval.max_new_tokens == cfg.rl.trl["max_completion_length"]
    hf = stage_seconds(cfg, CostModel(launch_overhead_s=0.035))
    assert (sum(hf.values()) / 60 + 11) / 60 == pytest.approx(3.0, abs=0.05)


def test_the_deepscaler_opt_in_is_the_estimate_docs_gpu_md_gives():
    cfg = load_config(REPO / "configs" / "r1_distill_1.5b_t4.yaml", DEEPSCALER)
    minutes = {stage: seconds / 60 for stage, seconds in stage_seconds(cfg).items()}
    assert minutes["rl"] == pytest.approx(106, abs=1) and minutes["eval"] == pytest.approx(31, abs=1)
    assert (sum(minutes.values()) + 11) / 60 == pytest.approx(2.8, abs=0.05)


def test_the_pipeline_left_scales_the_later_stages_by_the_measured_step():
    estimated = {"warmup": 100.0, "rl": 1000.0, "eval": 200.0}
    # The warm-up's steps take twice the estimate (10 steps estimated at 10 s; measured 20 s): RL and eval too.
    assert pipeline_left("warmup", 20.0, 7, estimated, 10) == (140.0, 140.0 + 2 * 1200.0)
    assert pipeline_left("rl", 5.0, 4, estimated, 100) == (20.0, 20.0 + 0.5 * 200.0)


def test_the_eta_is_printed_once_after_the_first_steps_of_a_resumed_stage():
    printed = []
    callback = PipelineEtaCallback("rl", {"warmup": 0.0, "rl": 100.0, "eval": 50.0}, first_steps=2, out=printed.append)
    state = types.SimpleNamespace(global_step=40, max_steps=100, is_world_process_zero=True)  # resumed at step 40
    for _ in range(4):
        callback.on_step_begin(None, state, None)
        state.global_step += 1
        callback.on_step_end(None, state, None)
    assert len(printed) == 1 and printed[0].startswith("rl: ") and "min for the whole pipeline" in printed[0]
    here, total = callback.reported
    assert total > here > 0
