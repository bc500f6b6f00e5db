"""End-to-end plumbing: every real benchmark loader (offline copies) + the tiny model -> run_eval report."""

from __future__ import annotations

import json

import pytest

from thinkless_lite.jsonl import read_jsonl
from thinkless_lite import records as rec
from thinkless_lite.stages import evaluate as ev
from thinkless_lite.config import load_config
from thinkless_lite.data.benchmarks import BENCHMARKS, BENCHMARKS_DIR_ENV

REAL = ["gsm8k", "math500", "minerva_algebra", "aime2024", "amc"]
ROWS = 2


@pytest.fixture
def no_hub(monkeypatch, benchmarks_dir):
    """Any hub access fails loudly; the offline folder is the conftest's."""
    import datasets

    def no_network(*a, **k):
        raise AssertionError(f"evaluation tried to reach the hub for {a[0] if a else '?'}")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    monkeypatch.setenv(BENCHMARKS_DIR_ENV, str(benchmarks_dir))
    return benchmarks_dir


def _cfg(tmp_path, tiny_model_dir, name, **eval_overrides):
    overrides = [f"output_dir={tmp_path}", f"name={name}", f"model.name_or_path={tiny_model_dir}", "model.backend=hf",
                 f"eval.limit={ROWS}", "eval.max_new_tokens=16", "eval.batch_size=8", "eval.per_level=1"]
    overrides += [f"eval.{k}={json.dumps(v)}" for k, v in {"sweep_tau": [], **eval_overrides}.items()]
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from thinkless_lite.config import ModelConfig
    from thinkless_lite.model import load_model

    return load_model(ModelConfig(name_or_path=str(tiny_model_dir), backend="hf"), trainable=False)


def test_every_benchmark_end_to_end(tmp_path, tiny_model_dir, tiny, no_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # load_benchmark then reads the offline copies
    cfg = _cfg(tmp_path, tiny_model_dir, "all", benchmarks=REAL + ["miniworld"], sweep_tau=[0.5])
    report = ev.evaluate(cfg)  # loads the model from cfg.model itself
    out = cfg.run_dir / "eval"
    for name in ("report.json", "report.md", "report.png", "records.jsonl", "resolved.yaml"):
        assert (out / name).is_file(), name

    saved = json.loads((out / "report.json").read_text())
    assert list(saved["benchmarks"]) == REAL + ["miniworld"]
    for name, per_mode in saved["benchmarks"].items():
        assert list(per_mode) == ["auto", "think", "short"]
        for summary in per_mode.values():
            assert summary["n"] == ROWS
            assert 0.0 <= summary["accuracy"] <= 1.0 and 0.0 <= summary["think_ratio"] <= 1.0
            assert 1.0 <= summary["mean_tokens"] <= 16.0
            assert "tokens_saved_vs_think" in summary
        assert per_mode["think"]["think_ratio"] == 1.0 and per_mode["short"]["think_ratio"] == 0.0
        assert {p["tau"] for p in saved["tau_sweeps"][name]} == {None, 0.0, 0.5}
    # MATH-style benchmarks carry levels; GSM8K, AIME and AMC have none.
    assert saved["benchmarks"]["math500"]["auto"]["by_difficulty"]
    assert saved["benchmarks"]["minerva_algebra"]["auto"]["by_difficulty"]
    assert saved["benchmarks"]["gsm8k"]["auto"]["by_difficulty"] == {}
    assert list(saved["benchmarks"]["miniworld"]["auto"]["by_difficulty"]) == ["1", "2"]
    assert all(len(points) == 3 for points in saved["tau_sweeps"].values())
    assert saved["model"] == str(tiny_model_dir) and saved["adapter"] is None

    records = read_jsonl(out / "records.jsonl")
    assert len(records) == 6 * ROWS * 5  # 6 benchmarks x (auto, think, short, tau=0.5, tau=0)
    golds = {(r["benchmark"], r["id"]): r["gold"] for r in records}
    assert golds[("amc", "amc-0")] == "142"  # float gold 142.0 normalised
    assert all(set(r) == set(rec.RECORD_FIELDS) for r in records)

    md = (out / "report.md").read_text()
    for name in REAL + ["miniworld"]:
        assert f"### {name}" in md and f"**{name}: think-threshold sweep**" in md
    assert "**math500 by difficulty**" in md and "**gsm8k by difficulty**" not in md
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"

    # A rerun with the same settings generates nothing: every answer is in records.jsonl.
    calls = []
    real_generate = rec.generate
    monkeypatch.setattr(rec, "generate", lambda *a, **k: calls.append(a) or real_generate(*a, **k))
    again = ev.evaluate(cfg, model=tiny.model, tokenizer=tiny.tokenizer)
    assert calls == [] and again["benchmarks"] == saved["benchmarks"] == report["benchmarks"]


@pytest.mark.parametrize("name", REAL)
def test_data_file_path_per_benchmark(tmp_path, tiny_model_dir, tiny, no_hub, monkeypatch, name):
    """eval.data_file: one benchmark read from a local file, without the offline switch."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    data_file = no_hub / BENCHMARKS[name].local_file
    cfg = _cfg(tmp_path, tiny_model_dir, name, benchmarks=[name], modes=["auto", "short"], data_file=str(data_file))
    report = ev.evaluate(cfg, out_dir=tmp_path / "eval", model=tiny.model, tokenizer=tiny.tokenizer)
    assert set(report["benchmarks"]) == {name}
    per_mode = report["benchmarks"][name]
    assert per_mode["auto"]["n"] == ROWS and per_mode["short"]["think_ratio"] == 0.0
    assert report["tau_sweeps"] == {} and "think" not in per_mode
    assert all((tmp_path / "eval" / f).is_file() for f in ("report.json", "report.md", "report.png"))

