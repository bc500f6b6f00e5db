"""Tests for thinkless_lite.data.benchmarks: the offline copies, gold normalisers, hub path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thinkless_lite.data import benchmarks as bm
from thinkless_lite.data.benchmarks import (BENCHMARKS, BENCHMARKS_DIR_ENV, UnknownBenchmarkError, benchmark_names,
                                           load_benchmark, load_benchmark_with_report, offline_path)
from thinkless_lite.data.golds import float_to_int_string, gsm8k_gold, math_level, strip_leading_zeros
from thinkless_lite.grading import last_boxed
from thinkless_lite.data.files import DataSourceError, HubUnreachableError

BENCH_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks"


def _file(name: str) -> Path:
    return BENCH_DIR / BENCHMARKS[name].local_file


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _offline_copy(name: str) -> list:
    """The items of the shared offline copy, read from the file named explicitly."""
    return load_benchmark(name, data_file=_file(name))


def fake_hub(monkeypatch, rows: list[dict]) -> list[tuple]:
    """``datasets.load_dataset`` answering ``rows``; the returned list collects each call's (path, name, split)."""
    import datasets

    calls = []

    def fake(path, name=None, *, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    return calls


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    """No test may reach the hub; the offline-mode env vars of the host must not leak in."""
    import datasets

    def no_network(*a, **k):
        raise ConnectionError(f"Couldn't reach '{a[0] if a else '?'}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv(BENCHMARKS_DIR_ENV, raising=False)


# --------------------------------------------------------------------------- offline copies

EXPECTED_COUNTS = {"gsm8k": 1319, "math500": 500, "minerva_algebra": 1187, "aime2024": 30, "amc": 83}


@pytest.mark.parametrize("name,count", sorted(EXPECTED_COUNTS.items()))
def test_offline_copy_loads_via_data_file(name, count):
    items, report = load_benchmark_with_report(name, data_file=_file(name))
    assert len(items) == count
    assert (report.total, report.kept, report.n_skipped) == (count, count, 0)
    assert all(i.source == name and i.question and i.gold and i.gold == i.gold.strip() for i in items)
    assert len({i.id for i in items}) == count


def test_math_train_skips_null_and_empty_answers(caplog):
    # The README mentions 2 null answers; the file also has 2 empty-string answers
    # (multiple-choice rows whose answer was lost), which are skipped too: 7474 - 4.
    with caplog.at_level(logging.WARNING):
        items, report = load_benchmark_with_report("math_train", data_file=_file("math_train"))
    assert report.total == 7474
    assert dict(report.skipped) == {"answer is None": 2, "answer is empty": 2}
    assert len(items) == report.kept == 7470
    assert "skipped 4" in caplog.text and "answer is None: 2" in caplog.text
    questions = {i.question for i in items}
    assert not any(q.startswith("What is the largest value of $x$, if $\\frac{x}{5}") for q in questions)
    assert {i.difficulty for i in items} == {None, 1, 2, 3, 4, 5}  # two rows say 0.0 = "Level ?"
    assert sum(i.difficulty is None for i in items) == 2
    assert items[0].gold == "0" and items[0].difficulty == 5


def test_gsm8k_golds():
    items = load_benchmark("gsm8k", data_file=_file("gsm8k"))
    assert items[0].gold == "18" and items[0].question.startswith("Janet")
    assert items[146].gold == "2125"  # "#### 2,125"
    assert items[505].gold == "1600"  # "#### 1,600"
    assert items[611].gold == "1450000"  # "#### 1,450,000"
    assert items[489].gold == "-10"
    assert all("," not in i.gold for i in items)
    assert all(i.gold.lstrip("-").replace(".", "", 1).isdigit() for i in items)
    assert items[505].meta["raw_answer"].endswith("#### 1,600")


def test_math500_golds_and_levels():
    items = load_benchmark("math500", data_file=_file("math500"))
    assert items[0].gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert items[0].id == "test/precalculus/807.json" and items[0].difficulty == 2
    assert {i.difficulty for i in items} == {1, 2, 3, 4, 5}
    assert items[0].meta["subject"] == "Precalculus"


def test_minerva_algebra_prefers_boxed_answer_and_parses_level():
    rows = _jsonl(_file("minerva_algebra"))
    items = load_benchmark("minerva_algebra", data_file=_file("minerva_algebra"))
    assert [i.gold for i in items] == [r["boxed_answer"].strip() for r in rows]
    assert items[0].gold == "2" and items[0].difficulty == 3  # "Level 3"
    assert {i.difficulty for i in items} == {1, 2, 3, 4, 5}
    # the normalised `answer` column is not used: e.g. it writes \infty as \iny
    odd = next(k for k, r in enumerate(rows) if "\\iny" in r["answer"])
    assert "\\infty" in items[odd].gold and "\\iny" not in items[odd].gold


def test_minerva_algebra_hub_rows_use_last_boxed_of_solution(monkeypatch, tmp_path):
    rows = _jsonl(_file("minerva_algebra"))
    calls = fake_hub(monkeypatch, [{k: r[k] for k in ("problem", "level", "type", "solution")} for r in rows])
    items = load_benchmark("minerva_algebra", offline=False)
    assert calls == [("EleutherAI/hendrycks_math", "algebra", "test")]
    assert [i.gold for i in items] == [r["boxed_answer"].strip() for r in rows]
    assert items[0].id == "minerva_algebra-0" and items[0].difficulty == 3

    # a local copy with a blank boxed_answer falls back to the solution's last \boxed{}
    p = tmp_path / "alg.jsonl"
    p.write_text(json.dumps({**rows[0], "boxed_answer": ""}) + "\n", encoding="utf-8")
    assert load_benchmark("minerva_algebra", data_file=p)[0].gold == "2"


def test_aime2024_golds():
    items = load_benchmark("aime2024", data_file=_file("aime2024"))
    assert items[0].id == "2024-I-1" and items[0].gold == "204"
    assert items[1].gold == "25"
    assert all(i.gold.isdigit() and not (len(i.gold) > 1 and i.gold.startswith("0")) for i in items)


def test_amc_float_golds():
    items = load_benchmark("amc", data_file=_file("amc"))
    assert items[0].gold == "142" and items[0].meta["raw_answer"] == 142.0
    golds = [i.gold for i in items]
    assert "-4" in golds and "0" in golds and "8178" in golds
    assert not any(g.endswith(".0") for g in golds)
    assert all(i.difficulty is None for i in items)  # AoPS ratings like 4.625 are not levels
    assert items[0].meta["difficulty"] == 2.0


def test_limit():
    items = load_benchmark("gsm8k", data_file=_file("gsm8k"), limit=5)
    assert [i.id for i in items] == [f"gsm8k-{k}" for k in range(5)]


# --------------------------------------------------------------------------- offline folder


def test_offline_path_default_and_env(monkeypatch, tmp_path):
    for name in BENCHMARKS:
        assert offline_path(name) == _file(name)
    assert offline_path("miniworld") is None
    monkeypatch.setenv(BENCHMARKS_DIR_ENV, str(tmp_path))
    assert offline_path("gsm8k") is None
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(
        json.dumps({"question": "q", "answer": "x\n#### 1,000"}) + "\n", encoding="utf-8"
    )
    assert offline_path("gsm8k") == tmp_path / "gsm8k" / "test.jsonl"
    items = load_benchmark("gsm8k", offline=True)
    assert [(i.question, i.gold) for i in items] == [("q", "1000")]


def test_offline_true_without_copy_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(BENCHMARKS_DIR_ENV, str(tmp_path))
    with pytest.raises(DataSourceError, match="no offline copy of benchmark 'amc'.*THINKLESS_BENCHMARKS_DIR"):
        load_benchmark("amc", offline=True)


def test_offline_true_reads_shared_copy():
    assert load_benchmark("aime2024", offline=True) == _offline_copy("aime2024")


# --------------------------------------------------------------------------- hub path


def test_hub_success_uses_spec(monkeypatch):
    rows = [{"question": "Q1", "answer": "work\n#### 1,234"}, {"question": "Q2", "answer": "#### 7"}]
    calls = fake_hub(monkeypatch, rows)
    items = load_benchmark("gsm8k", offline=False)
    assert calls == [("openai/gsm8k", "main", "test")]
    assert [i.gold for i in items] == ["1234", "7"]

    calls = fake_hub(monkeypatch, [{"id": 60, "problem": "P", "answer": "073", "solution": "s"}])
    (item,) = load_benchmark("aime2024")
    assert calls == [("HuggingFaceH4/aime_2024", None, "train")]
    assert (item.id, item.gold) == ("60", "73")


def test_hub_unreachable_offline_false_is_friendly():
    with pytest.raises(HubUnreachableError, match="cannot reach the Hugging Face hub.*--data-file"):
        load_benchmark("gsm8k", offline=False)


def test_hub_unreachable_falls_back_to_offline_copy(caplog):
    with caplog.at_level(logging.WARNING, logger="thinkless_lite.data.benchmarks"):
        items = load_benchmark("amc")
    assert items == _offline_copy("amc")
    assert "hub unreachable" in caplog.text


def test_hub_unreachable_without_offline_copy(monkeypatch, tmp_path):
    monkeypatch.setenv(BENCHMARKS_DIR_ENV, str(tmp_path))
    with pytest.raises(HubUnreachableError, match="--data-file"):
        load_benchmark("math500")


def test_hf_offline_env_goes_straight_to_offline_copy(monkeypatch):
    import datasets

    def must_not_call(*a, **k):  # pragma: no cover
        raise AssertionError("hub called in offline mode")

    monkeypatch.setattr(datasets, "load_dataset", must_not_call)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_benchmark("aime2024") == _offline_copy("aime2024")


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("bad", ["gsm9k", "", "MATH"])
def test_unknown_benchmark_lists_names(bad):
    with pytest.raises(UnknownBenchmarkError) as e:
        load_benchmark(bad)
    msg = str(e.value)
    for name in [*BENCHMARKS, "miniworld"]:
        assert name in msg
    with pytest.raises(UnknownBenchmarkError):
        offline_path(bad)


def test_names_are_normalised():
    assert "miniworld" in benchmark_names()
    assert bm.get_spec("GSM8K").name == "gsm8k" and bm.get_spec("minerva-algebra").name == "minerva_algebra"


# --------------------------------------------------------------------------- normalisers


@pytest.mark.parametrize(
    "answer,gold",
    [("a\n#### 18", "18"), ("#### 1,600", "1600"), ("x #### -3", "-3"), ("####  2,125.50 ", "2125.50"), ("no marker", None), (None, None)],
)
def test_gsm8k_gold(answer, gold):
    assert gsm8k_gold(answer) == gold


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_gsm8k_gold_thousands_property(n):
    assert gsm8k_gold(f"steps\n#### {n:,}") == str(n)


@pytest.mark.parametrize(
    "value,out", [("025", "25"), ("000", "0"), ("204", "204"), (7, "7"), ("-007", "-7"), (" 10 ", "10"), ("\\frac12", "\\frac12"), (None, None)]
)
def test_strip_leading_zeros(value, out):
    assert strip_leading_zeros(value) == out


@pytest.mark.parametrize(
    "value,out", [(142.0, "142"), (-4.0, "-4"), (0.0, "0"), (2.5, "2.5"), ("142.0", "142"), (3, "3"), ("1/2", "1/2"), (None, None), (float("nan"), None)]
)
def test_float_to_int_string(value, out):
    assert float_to_int_string(value) == out


@pytest.mark.parametrize(
    "text,out",
    [
        ("so $\\boxed{2}$.", "2"),
        ("$\\boxed{1}$ then $\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{ x \\in [-2,7] }", "x \\in [-2,7]"),
        ("\\boxed {5}", "5"),
        ("$\\boxed 5$", "5"),
        ("\\fbox{7}", "7"),
        ("\\boxed{2} and \\boxed{unclosed", "2"),
        ("no box", None),
        ("\\boxedx{3}", None),
        (None, None),
    ],
)
def test_last_boxed(text, out):
    assert last_boxed(text) == out


@given(st.text(alphabet=st.characters(blacklist_characters="{}\\"), max_size=20))
def test_last_boxed_roundtrip_property(inner):
    assert last_boxed(f"x \\boxed{{a{{{inner}}}b}} y") == f"a{{{inner}}}b".strip()


@pytest.mark.parametrize("value,level", [(3, 3), ("Level 5", 5), (5.0, 5), (0.0, None), ("Level ?", None), (6, None)])
def test_math_level(value, level):
    assert math_level(value) == level
