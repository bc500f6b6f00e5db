"""Evaluation harness: summaries, resumable records, report files, the tau sweep (fast tests)."""

from __future__ import annotations

import json
import math

import pytest

from thinkless_lite.jsonl import read_jsonl
from thinkless_lite.report import markdown_tables, write_report
from thinkless_lite import records as rec, summaries
from thinkless_lite.stages import evaluate as ev
from thinkless_lite.config import RunConfig, load_config
from thinkless_lite.data.items import MathItem
from thinkless_lite.data.miniworld import solve
from thinkless_lite.generation import Generation, SamplingSettings

# ---------------------------------------------------------------- summaries on hand-made records


def _rec(correct, mode, num_tokens, difficulty=None, format_error=False):
    return {"correct": correct, "mode": mode, "num_tokens": num_tokens, "difficulty": difficulty,
            "format_error": format_error}


HAND_RECORDS = [
    _rec(True, "think", 100, difficulty=2),
    _rec(False, "short", 10, difficulty=1),
    _rec(True, "short", 20, difficulty=1),
    _rec(False, None, 30, difficulty=None, format_error=True),
    _rec(True, "think", 40, difficulty=10),
]


def test_summarize_overall_numbers():
    s = summaries.summarize(HAND_RECORDS)
    assert s["n"] == 5
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["think_ratio"] == pytest.approx(2 / 5)
    assert s["mean_tokens"] == pytest.approx((100 + 10 + 20 + 30 + 40) / 5)  # 40.0
    assert s["format_error_rate"] == pytest.approx(1 / 5)


def test_summarize_by_difficulty_sorted_numerically_and_skips_missing():
    by = summaries.summarize(HAND_RECORDS)["by_difficulty"]
    assert list(by) == ["1", "2", "10"]  # numeric order, string keys; the no-difficulty record is left out
    assert by["1"] == {"n": 2, "accuracy": 0.5, "think_ratio": 0.0, "mean_tokens": 15.0}
    assert by["2"] == {"n": 1, "accuracy": 1.0, "think_ratio": 1.0, "mean_tokens": 100.0}
    assert by["10"] == {"n": 1, "accuracy": 1.0, "think_ratio": 1.0, "mean_tokens": 40.0}
    assert sum(d["n"] for d in by.values()) == 4


def test_summarize_is_json_friendly_and_handles_empty():
    s = summaries.summarize(HAND_RECORDS)
    assert json.loads(json.dumps(s)) == s
    empty = summaries.summarize([])
    assert empty == {"n": 0, "accuracy": 0.0, "think_ratio": 0.0, "mean_tokens": 0.0, "format_error_rate": 0.0,
                     "by_difficulty": {}}
    assert list(summaries.summarize([_rec(True, "short", 5, difficulty=3.0)])["by_difficulty"]) == ["3"]


def test_tokens_saved_vs_think():
    per_mode = {"auto": {"mean_tokens": 30.0}, "think": {"mean_tokens": 120.0}, "short": {"mean_tokens": 12.0}}
    out = summaries.with_tokens_saved(per_mode)
    assert out["auto"]["tokens_saved_vs_think"] == pytest.approx(0.75)
    assert out["short"]["tokens_saved_vs_think"] == pytest.approx(0.9)
    assert out["think"]["tokens_saved_vs_think"] == 0.0
    assert "tokens_saved_vs_think" not in summaries.with_tokens_saved({"auto": {"mean_tokens": 3.0}})["auto"]


# ---------------------------------------------------------------- a fake generate (no model)


class FakeGenerate:
    """Stands in for infer.generate: think answers right (60 tokens), short answers ``0`` (4 tokens).

    auto samples nothing: it thinks when P(think)=0.5 >= tau (tau None counts as 0.5 >= 0.5).
    ``fail_on_call`` raises on that call number, as a kill mid-evaluation would.
    """

    def __init__(self, answers=None, fail_on_call=None):
        self.answers = answers or {}
        self.calls = []
        self.fail_on_call = fail_on_call

    def answer(self, question):
        return self.answers.get(question) or str(solve(question))

    def __call__(self, model, tokenizer, questions, *, mode="auto", tau=None, settings=SamplingSettings(),
                 tokens=None, system_prompt=None, batch_size=32, progress=False):
        self.calls.append({"questions": list(questions), "mode": mode, "tau": tau, "seed": settings.seed})
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt("killed")
        requested = f"tau={tau:g}" if tau is not None else mode
        out = []
        for q in questions:
            chosen = mode if mode != "auto" else ("think" if 0.5 >= (tau if tau is not None else 0.5) else "short")
            if chosen == "think":
                completion, answer, n = f"<think>working on {q}</think>{self.answer(q)}", self.answer(q), 60
            else:
                completion, answer, n = "<short>0", "0", 4
            out.append(Generation(question=q, mode=chosen, requested=requested, p_think=0.5, reasoning="",
                                  answer=answer, completion=completion, num_tokens=n))
        return out

    @property
    def generated(self):
        return sum(len(c["questions"]) for c in self.calls)


ITEMS = [MathItem(question=f"q{i}", gold=str(10 + i), id=f"item-{i}", difficulty=1 + i % 2) for i in range(5)]
ANSWERS = {f"q{i}": str(10 + i) for i in range(5)}


def test_evaluate_items_records_fields_seeds_and_grading(monkeypatch):
    fake = FakeGenerate(ANSWERS)
    monkeypatch.setattr(rec, "generate", fake)
    records = rec.evaluate_items(None, None, ITEMS, mode="think", settings=SamplingSettings(seed=7), num_samples=2,
                                batch_size=2, benchmark="hand", progress=False)
    assert len(records) == 10
    assert all(set(r) == set(rec.RECORD_FIELDS) for r in records)
    assert [r["sample"] for r in records] == [0] * 5 + [1] * 5
    assert [r["seed"] for r in records] == [7] * 5 + [8] * 5
    assert sorted({c["seed"] for c in fake.calls}) == [7, 8]
    assert all(r["correct"] and r["mode"] == "think" and r["requested"] == "think" for r in records)
    short = rec.evaluate_items(None, None, ITEMS, mode="short", benchmark="hand", progress=False)
    assert not any(r["correct"] for r in short)  # "0" is wrong for every gold here
    assert [r["id"] for r in short] == [it.id for it in ITEMS]


def test_evaluate_items_reads_answer_only_after_the_reasoning(monkeypatch):
    """The gold appearing inside the reasoning must not count: the answer part is what is graded."""
    item = MathItem(question="q", gold="42", id="x")

    def gen(model, tokenizer, questions, **kw):
        return [Generation(question="q", mode="think", requested="think", p_think=0.9, reasoning="42",
                           answer="7", completion="<think>the answer is 42</think>7", num_tokens=9)]

    monkeypatch.setattr(rec, "generate", gen)
    (record,) = rec.evaluate_items(None, None, [item], mode="think", progress=False)
    assert record["correct"] is False


def test_records_path_resumes_after_a_kill(monkeypatch, tmp_path):
    path = tmp_path / "records.jsonl"
    killed = FakeGenerate(ANSWERS, fail_on_call=3)
    monkeypatch.setattr(rec, "generate", killed)
    with pytest.raises(KeyboardInterrupt):
        rec.evaluate_items(None, None, ITEMS, mode="think", num_samples=2, batch_size=2, benchmark="hand",
                          records_path=path, progress=False)
    assert len(read_jsonl(path)) == 4  # two finished batches were saved before the kill

    resumed = FakeGenerate(ANSWERS)
    monkeypatch.setattr(rec, "generate", resumed)
    records = rec.evaluate_items(None, None, ITEMS, mode="think", num_samples=2, batch_size=2, benchmark="hand",
                                records_path=path, progress=False)
    assert resumed.generated == 6  # only the missing (item, sample) pairs
    assert len(records) == 10 and len(read_jsonl(path)) == 10
    assert [(r["id"], r["sample"]) for r in records] == [(it.id, s) for s in range(2) for it in ITEMS]

    again = FakeGenerate(ANSWERS)
    monkeypatch.setattr(rec, "generate", again)
    assert rec.evaluate_items(None, None, ITEMS, mode="think", num_samples=2, batch_size=2, benchmark="hand",
                             records_path=path, progress=False) == records
    assert again.calls == []  # nothing regenerated

    # Another mode and another benchmark are other keys: generated, and not mixed into the result.
    other = rec.evaluate_items(None, None, ITEMS[:2], mode="short", benchmark="hand", records_path=path,
                              progress=False)
    assert len(other) == 2 and {r["requested"] for r in other} == {"short"}
    assert again.generated == 2
    assert len(rec.evaluate_items(None, None, ITEMS[:2], mode="think", benchmark="other", records_path=path,
                                 progress=False)) == 2
    assert again.generated == 4


def test_torn_last_line_is_regenerated(monkeypatch, tmp_path):
    path = tmp_path / "records.jsonl"
    fake = FakeGenerate(ANSWERS)
    monkeypatch.setattr(rec, "generate", fake)
    rec.evaluate_items(None, None, ITEMS, mode="short", benchmark="hand", records_path=path, progress=False)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # killed while writing the 4th record
    fake.calls.clear()
    records = rec.evaluate_items(None, None, ITEMS, mode="short", benchmark="hand", records_path=path,
                                progress=False)
    assert fake.generated == 2 and len(records) == 5
    assert len(read_jsonl(path)) == 5  # the torn line is ignored, the new ones start on a fresh line


def test_duplicate_ids_and_bad_arguments_raise():
    twins = [MathItem("a", "1", id="same"), MathItem("b", "2", id="same")]
    with pytest.raises(ValueError, match="unique"):
        rec.evaluate_items(None, None, twins, progress=False)
    with pytest.raises(ValueError, match="mode"):
        rec.evaluate_items(None, None, ITEMS, mode="ponder", progress=False)
    with pytest.raises(ValueError, match="mode='auto'"):
        rec.evaluate_items(None, None, ITEMS, mode="think", tau=0.5, progress=False)
    with pytest.raises(ValueError, match="num_samples"):
        rec.evaluate_items(None, None, ITEMS, num_samples=0, progress=False)


@pytest.mark.parametrize("taus", [[1.5], [0.3, -0.1], [float("nan")], ["0.5"], [True], [], "0.5", None])
def test_tau_sweep_rejects_bad_taus_before_generating(taus):
    with pytest.raises(ValueError, match="tau"):
        rec.tau_sweep(None, None, ITEMS, taus, progress=False)


def test_tau_sweep_adds_both_ends_and_sorts_by_tokens(monkeypatch):
    fake = FakeGenerate(ANSWERS)
    monkeypatch.setattr(rec, "generate", fake)
    points = rec.tau_sweep(None, None, ITEMS, [0.9, 0.3, 0.3], benchmark="hand", progress=False)
    assert [(p["tau"], p["mode"]) for p in points] == [(None, "short"), (0.9, "auto"), (0.3, "auto"), (0.0, "auto")]
    assert [p["mean_tokens"] for p in points] == sorted(p["mean_tokens"] for p in points)
    assert points[0]["think_ratio"] == 0.0 and points[-1]["think_ratio"] == 1.0
    assert points[-1]["accuracy"] == 1.0 and points[0]["accuracy"] == 0.0
    only = rec.tau_sweep(None, None, ITEMS, [0.3], include_ends=False, progress=False)
    assert [p["tau"] for p in only] == [0.3]


# ---------------------------------------------------------------- report files


def _summary(acc, think, tokens, by=None):
    return {"n": 4, "accuracy": acc, "think_ratio": think, "mean_tokens": tokens, "format_error_rate": 0.0,
            "by_difficulty": by or {}}


def _report():
    by = {"1": {"n": 2, "accuracy": 1.0, "think_ratio": 0.0, "mean_tokens": 5.0},
          "3": {"n": 2, "accuracy": 0.5, "think_ratio": 1.0, "mean_tokens": 80.0}}
    per_mode = summaries.with_tokens_saved({"auto": _summary(0.75, 0.5, 42.5, by), "think": _summary(0.8, 1.0, 100.0, by),
                                     "short": _summary(0.5, 0.0, 5.0, by)})
    sweep = [{"tau": None, "mode": "short", "n": 4, "accuracy": 0.5, "think_ratio": 0.0, "mean_tokens": 5.0},
             {"tau": 0.5, "mode": "auto", "n": 4, "accuracy": 0.75, "think_ratio": 0.5, "mean_tokens": 42.5},
             {"tau": 0.0, "mode": "auto", "n": 4, "accuracy": 0.8, "think_ratio": 1.0, "mean_tokens": 100.0}]
    gsm = {"auto": _summary(0.1, 0.2, 30.0), "short": _summary(0.05, 0.0, 8.0)}
    return {"benchmarks": {"miniworld": per_mode, "gsm8k": gsm}, "tau_sweeps": {"miniworld": sweep},
            "model": "tiny", "adapter": None, "seconds": 1.5}


def test_write_report_files(tmp_path):
    report = _report()
    paths = write_report(report, tmp_path / "out")
    assert set(paths) == {"json", "md", "png"}
    assert [p.name for p in paths.values()] == ["report.json", "report.md", "report.png"]
    assert json.loads(paths["json"].read_text()) == report
    md = paths["md"].read_text()
    assert "### miniworld" in md and "### gsm8k" in md
    assert "| mode | n | accuracy | think ratio | mean tokens | tokens saved vs think | format errors |" in md
    assert "| auto | 4 | 75.0% | 50.0% | 42.5 | 57.5% | 0.0% |" in md  # 1 - 42.5 / 100
    assert "| short | 4 | 5.0% | 0.0% | 8.0 | — | 0.0% |" in md  # gsm8k ran no forced think
    assert "**miniworld by difficulty** (accuracy / think ratio / mean tokens)" in md
    assert "| level | n | auto | think | short |" in md
    assert "| 3 | 2 | 50.0% / 100.0% / 80.0 | 50.0% / 100.0% / 80.0 | 50.0% / 100.0% / 80.0 |" in md
    assert "**gsm8k by difficulty**" not in md
    assert "**miniworld: think-threshold sweep**" in md
    assert "| forced short | 4 | 50.0% | 0.0% | 5.0 |" in md and "| 0.5 | 4 | 75.0% |" in md
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_difficulty_mix_is_reported_where_there_is_one():
    records = [{"correct": c, "mode": m, "num_tokens": t, "format_error": False, "difficulty": d}
               for c, m, t, d in [(True, "short", 5, 1), (True, "short", 5, 1), (True, "think", 50, 3), (False, "short", 9, 3)]]
    summary = summaries.summarize(records, mix={1: 0.75, 3: 0.25, 8: 1.0})  # a level without records does not count
    assert summary["on_mix"]["accuracy"] == pytest.approx(0.75 * 1.0 + 0.25 * 0.5)
    assert summary["on_mix"]["think_ratio"] == pytest.approx(0.25 * 0.5)
    assert summary["on_mix"]["mean_tokens"] == pytest.approx(0.75 * 5 + 0.25 * 29.5)
    assert "on_mix" not in summaries.summarize(records)
    md = "\n".join(markdown_tables({"benchmarks": {"miniworld": {"auto": summary}}}))
    assert "Weighted by the difficulty mix" in md and "| auto | 87.5% | 12.5% | 11.1 |" in md


# ---------------------------------------------------------------- run_eval with a fake model


def _cfg(tmp_path, **eval_overrides) -> RunConfig:
    overrides = [f"output_dir={tmp_path}", "name=fake", "eval.limit=6", "eval.batch_size=4", "seed=3"]
    overrides += [f"eval.{k}={json.dumps(v)}" for k, v in {"sweep_tau": [], **eval_overrides}.items()]
    return load_config(None, overrides)


def test_run_eval_report_shape(monkeypatch, tmp_path):
    fake = FakeGenerate()
    monkeypatch.setattr(rec, "generate", fake)
    cfg = _cfg(tmp_path, sweep_tau=[0.7, 0.2])
    report = ev.evaluate(cfg, model=object(), tokenizer=object())
    out = cfg.run_dir / "eval"
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "report.png", "records.jsonl",
                                               "resolved.yaml"}
    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert set(saved["benchmarks"]) == {"miniworld"}
    assert set(saved["benchmarks"]["miniworld"]) == {"auto", "think", "short"}
    per_mode = saved["benchmarks"]["miniworld"]
    for mode in ("auto", "think", "short"):
        assert {"n", "accuracy", "think_ratio", "mean_tokens", "format_error_rate", "by_difficulty",
                "tokens_saved_vs_think", "on_mix"} <= set(per_mode[mode])
    assert per_mode["think"]["accuracy"] == 1.0 and per_mode["short"]["think_ratio"] == 0.0
    assert per_mode["short"]["tokens_saved_vs_think"] == pytest.approx(1 - 4 / 60)
    assert per_mode["auto"]["n"] == 6 and list(per_mode["auto"]["by_difficulty"]) == ["1", "2", "3", "4", "5", "6"]
    sweep = saved["tau_sweeps"]["miniworld"]
    assert [(p["tau"], p["mode"]) for p in sweep] == [(None, "short"), (0.7, "auto"), (0.2, "auto"), (0.0, "auto")]
    assert all({"tau", "accuracy", "think_ratio", "mean_tokens"} <= set(p) for p in sweep)
    assert saved["model"] == cfg.model.name_or_path and saved["adapter"] is None and saved["seconds"] >= 0
    assert {c["seed"] for c in fake.calls} == {3}

    # Rerun: everything comes from records.jsonl (the sweep's short point reused the short mode's records).
    rerun = FakeGenerate()
    monkeypatch.setattr(rec, "generate", rerun)
    again = ev.evaluate(cfg, model=object(), tokenizer=object())
    assert rerun.calls == [] and again["benchmarks"] == report["benchmarks"]
    assert len(read_jsonl(out / "records.jsonl")) == 6 * 6  # auto, think, short, tau 0.7, 0.2, 0 (short shared)

    # Other generation settings: the old records are set aside, not reused.
    changed = _cfg(tmp_path, max_new_tokens=32, sweep_tau=[0.7, 0.2])
    ev.evaluate(changed, model=object(), tokenizer=object())
    assert rerun.generated == 6 * 6
    assert len(list(out.glob("records.stale-*.jsonl"))) == 1


def test_eval_stage_sets_up_once_and_writes_its_recipe_once(monkeypatch, tmp_path):
    """``thinkless-lite eval``: the recipe's threads, ``<run>/eval``, and one resolved.yaml holding the recipe."""
    from types import SimpleNamespace

    import torch

    from thinkless_lite import config, model

    threads, written = [], []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    monkeypatch.setattr(ev, "save_resolved", lambda c, out: written.append(out) or config.save_resolved(c, out))
    monkeypatch.setattr(model, "load_model", lambda *a, **k: SimpleNamespace(model=object(), tokenizer=object()))
    monkeypatch.setattr(rec, "generate", FakeGenerate())
    cfg = _cfg(tmp_path, modes=["short"])
    ev.main(cfg)
    assert threads == [cfg.threads] and written == [cfg.run_dir / "eval"]
    assert load_config(cfg.run_dir / "eval" / "resolved.yaml") == cfg


def test_both_miniworld_paths_give_the_same_items():
    """The evaluation stage and ``load_benchmark("miniworld")`` read one definition of the held-out set."""
    from thinkless_lite.data.benchmarks import load_benchmark, miniworld_items
    from thinkless_lite.data.miniworld import MiniWorld, benchmark_items

    cfg = load_config("mini", ["eval.limit=30"])
    items = ev.load_eval_items(cfg, "miniworld")
    assert items == miniworld_items(cfg, limit=30)
    assert items == benchmark_items(limit=30, per_level=cfg.eval.per_level, world=cfg.miniworld)  # as before
    assert load_benchmark("miniworld", limit=30) == miniworld_items(limit=30)
    assert miniworld_items(limit=30) == benchmark_items(limit=30, per_level=50, world=MiniWorld())  # no recipe
    default = load_config(None, ["eval.per_level=50", "eval.limit=30"])
    assert ev.load_eval_items(default, "miniworld") == load_benchmark("miniworld", limit=30)


def test_records_follow_the_adapter_content_not_its_path(monkeypatch, tmp_path):
    """A warm-up copied into another run (routing_ablation, real_model_outcome --warmup) keeps its records;
    an adapter with other weights at the same path does not."""
    import dataclasses
    import shutil

    first = tmp_path / "run_a" / "adapter"
    first.mkdir(parents=True)
    (first / "adapter_config.json").write_text('{"r": 8}')
    (first / "adapter_model.safetensors").write_bytes(b"weights-1")
    fake = FakeGenerate()
    monkeypatch.setattr(rec, "generate", fake)
    cfg = _cfg(tmp_path, modes=["think"])
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, adapter_path=str(first)))
    ev.evaluate(cfg, model=object(), tokenizer=object())
    assert fake.generated == 6

    copy = tmp_path / "run_b" / "adapter"
    shutil.copytree(first, copy)
    moved = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, adapter_path=str(copy)))
    ev.evaluate(moved, model=object(), tokenizer=object())
    assert fake.generated == 6, "the same adapter at another path must reuse its records"

    (copy / "adapter_model.safetensors").write_bytes(b"weights-2")
    ev.evaluate(moved, model=object(), tokenizer=object())
    assert fake.generated == 12 and len(list((cfg.run_dir / "eval").glob("records.stale-*.jsonl"))) == 1
    assert ev.adapter_identity("someone/hub-adapter") == "someone/hub-adapter" and ev.adapter_identity(None) is None


def test_run_eval_uses_cfg_tau_for_auto_and_checks_data_file(monkeypatch, tmp_path):
    fake = FakeGenerate()
    monkeypatch.setattr(rec, "generate", fake)
    report = ev.evaluate(_cfg(tmp_path, tau=0.9, modes=["auto"]), out_dir=tmp_path / "e", model=object(),
                         tokenizer=object())
    assert {c["tau"] for c in fake.calls} == {0.9}
    auto = report["benchmarks"]["miniworld"]["tau=0.9"]  # the routing's name: auto thresholded at 0.9
    assert auto["think_ratio"] == 0.0 and report["tau_sweeps"] == {}
    assert "tokens_saved_vs_think" not in auto
    with pytest.raises(ValueError, match="data_file"):
        ev.evaluate(_cfg(tmp_path, benchmarks=["gsm8k", "amc"], data_file="x.jsonl"), model=object(),
                    tokenizer=object())
    with pytest.raises(ValueError, match="both"):
        ev.evaluate(_cfg(tmp_path), model=object())


# ---------------------------------------------------------------- the tiny real model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from thinkless_lite.config import ModelConfig
    from thinkless_lite.model import load_model

    return load_model(ModelConfig(name_or_path=str(tiny_model_dir), backend="hf"), trainable=False)


def test_tau_sweep_on_tiny_model(tiny):
    from thinkless_lite.data.miniworld import benchmark_items

    items = benchmark_items(limit=4, per_level=1)
    points = rec.tau_sweep(tiny.model, tiny.tokenizer, items, [0.5, 0.2], settings=SamplingSettings(max_new_tokens=6),
                          batch_size=4, benchmark="miniworld", progress=False)
    assert len(points) == 4
    assert {p["tau"] for p in points} == {0.5, 0.2, 0.0, None}
    for p in points:
        assert set(p) == {"tau", "mode", "n", "accuracy", "think_ratio", "mean_tokens", "format_error_rate"}
        assert p["n"] == 4 and 0.0 <= p["accuracy"] <= 1.0 and 0.0 <= p["think_ratio"] <= 1.0
        assert 1 <= p["mean_tokens"] <= 6 and math.isfinite(p["mean_tokens"])
    assert [p["mean_tokens"] for p in points] == sorted(p["mean_tokens"] for p in points)
    by_tau = {p["tau"]: p for p in points}
    assert by_tau[0.0]["think_ratio"] == 1.0 and by_tau[None]["think_ratio"] == 0.0
    assert by_tau[None]["mode"] == "short"
