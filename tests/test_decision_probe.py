"""benchmarks/decision_probe.py on the shipped mini base: its verdict line and its trace of what moved each level."""

import json
import sys
import warnings

import pytest
import torch

from thinkless_lite.config import load_config
from thinkless_lite.model import load_model, save_adapter

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import decision_probe  # noqa: E402

ACCURACY = "1:1.0/1.0,2:1.0/0.5,3:0.95/0.2"  # short pays at k=1, thinking at k=2-3


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A fresh adapter on the mini base (the probe only needs one to start from)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(load_config("mini", ["model.load_in_4bit=false"]).model, trainable=True, seed=0)
    torch.set_num_threads(threads)
    return save_adapter(loaded, tmp_path_factory.mktemp("probe") / "adapter")


def test_the_trace_splits_every_move_into_the_ranking_and_the_threshold(adapter, tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        code = decision_probe.main(["--config", "mini", "--adapter", str(adapter), "--only", "recipe", "--steps", "3",
                                    "--every", "1", "--accuracy", ACCURACY, "--trace", "--out", str(tmp_path),
                                    "--set", "threads=1", "--set", "model.load_in_4bit=false",
                                    "--set", "rl.prompts_per_step=4"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    printed = capsys.readouterr().out
    verdict = json.loads(printed.strip().splitlines()[-1])
    assert verdict["oracle"] == {"1": "short", "2": "think", "3": "think"}
    assert set(verdict["variants"]["recipe"]["p_think"]) == {"1", "2", "3"}
    assert "moved since the start by the ranking / the threshold" in printed
    rows = [json.loads(line) for line in (tmp_path / "trace_recipe.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(len(r["levels"]) == 4 for r in rows)
    for before, after in zip(rows, rows[1:]):  # each step's two parts add up to the move of the watched prompts
        for k in ("k1", "k2", "k3"):
            moved = after[k]["log_odds"] - before[k]["log_odds"]
            assert after[k]["ranking"] + after[k]["threshold"] == pytest.approx(moved, abs=1e-4)
    assert any(abs(r["k1"]["threshold"]) > 0 for r in rows)  # the recipe's threshold moved something
