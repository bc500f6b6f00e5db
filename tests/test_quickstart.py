"""The learning outcome, in CI: a shorter quickstart from the shipped base must still learn when to think.

Looser than benchmarks/quickstart_outcome.py (fewer steps, fewer test questions), but each assertion
fails if the model stops learning: direct answers after warm-up, routing by difficulty after DeGRPO,
and fewer tokens than forced thinking at no real cost in accuracy.
"""

import json

import pytest

from thinkless_lite.config import load_config


@pytest.mark.slow
def test_quickstart_learns_when_to_think(tmp_path):
    from thinkless_lite.quickstart import main

    cfg = load_config("configs/mini.yaml", [f"output_dir={tmp_path}", "name=qs", "eval.per_level=20",
                                             "eval.sweep_tau=[0.0, 0.5, 1.0]", *CI_OVERRIDES])
    main(cfg)
    report = json.loads((tmp_path / "qs" / "report.json").read_text())
    warm = report["after_warmup"]
    assert warm["think"]["by_difficulty"]["1"]["accuracy"] >= 0.9          # warm-up keeps the reasoning
    assert warm["short"]["by_difficulty"]["1"]["accuracy"] >= 0.75         # ... and learns direct answers
    auto, think = report["auto"], report["think"]
    levels = auto["by_difficulty"]
    assert levels["1"]["think_ratio"] <= 0.35, levels["1"]                 # easy: mostly short
    assert levels["8"]["think_ratio"] >= 0.7, levels["8"]                  # hard: mostly think
    assert auto["on_mix"]["accuracy"] >= think["on_mix"]["accuracy"] - 0.08
    assert auto["on_mix"]["mean_tokens"] <= 0.75 * think["on_mix"]["mean_tokens"]
    assert [p["tau"] for p in report["tau_sweep"]]                           # the sweep ran
    assert (tmp_path / "qs" / "rl" / "curves.png").stat().st_size > 10_000
    assert (tmp_path / "qs" / "report.png").stat().st_size > 10_000


CI_OVERRIDES: list[str] = []
