"""Tests for thinkless_lite.data.files: reading rows (files and hub) and rows -> MathItem."""

from __future__ import annotations

import json
import logging

import pytest

from thinkless_lite.data.items import MathItem
from thinkless_lite.data.files import (
    ColumnMap,
    ColumnMappingError,
    DataFileError,
    DataSourceError,
    HubUnreachableError,
    MissingDataFileError,
    NoUsableRowsError,
    SkipReport,
    default_gold,
    load_rows,
    parse_difficulty,
    read_rows,
    rows_to_items,
)

ROWS = [{"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": "4"}]


# --------------------------------------------------------------------------- read_rows: formats


def test_read_json_array(tmp_path):
    p = tmp_path / "rows.json"
    p.write_text(json.dumps(ROWS), encoding="utf-8")
    assert read_rows(p).to_list() == ROWS
    assert read_rows(str(p)).to_list() == ROWS


@pytest.mark.parametrize("key", ["data", "rows", "whatever"])
def test_read_json_object_holding_a_list(tmp_path, key):
    p = tmp_path / "rows.json"
    p.write_text(json.dumps({"version": 1, key: ROWS}), encoding="utf-8")
    assert read_rows(p).to_list() == ROWS


def test_read_json_that_is_really_jsonl(tmp_path):
    p = tmp_path / "rows.json"
    p.write_text("\n".join(json.dumps(r) for r in ROWS), encoding="utf-8")
    assert read_rows(p).to_list() == ROWS


def test_read_jsonl_skips_blank_lines_and_bom(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + ("\n".join(json.dumps(r) for r in ROWS) + "\n\n").encode())
    assert read_rows(p).to_list() == ROWS


def test_read_csv(tmp_path):
    p = tmp_path / "rows.csv"
    p.write_text('question,answer\n1+1?,2\n"a, b?",4\n', encoding="utf-8")
    assert read_rows(p).to_list() == [{"question": "1+1?", "answer": "2"}, {"question": "a, b?", "answer": "4"}]


def test_read_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), p)
    assert read_rows(p).to_list() == ROWS


# --------------------------------------------------------------------------- read_rows: bad input


def test_missing_file(tmp_path):
    p = tmp_path / "nope" / "rows.jsonl"
    with pytest.raises(MissingDataFileError, match="not found") as e:
        read_rows(p)
    assert str(p) in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


@pytest.mark.parametrize("name,content", [("e.jsonl", b""), ("e.json", b""), ("e.csv", b""), ("w.json", b" \n\n ")])
def test_empty_file(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataFileError, match="empty") as e:
        read_rows(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("content", [b"[]", b"question,answer\n"])
def test_file_without_rows(tmp_path, content):
    p = tmp_path / ("rows.json" if content.startswith(b"[") else "rows.csv")
    p.write_bytes(content)
    with pytest.raises(DataFileError, match="no rows"):
        read_rows(p)


def test_non_utf8_names_offset_and_line(tmp_path):
    p = tmp_path / "latin1.jsonl"
    first = json.dumps(ROWS[0]).encode() + b"\n"
    p.write_bytes(first + '{"question": "caf\xe9?", "answer": "1"}\n'.encode("latin-1"))
    with pytest.raises(DataFileError) as e:
        read_rows(p)
    msg = str(e.value)
    offset = len(first) + len(b'{"question": "caf')
    assert str(p) in msg and "UTF-8" in msg
    assert f"byte offset {offset}" in msg and "line 2" in msg and "0xe9" in msg


def test_bad_jsonl_line(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n{question: oops\n", encoding="utf-8")
    with pytest.raises(DataFileError, match="line 3 is not valid JSON") as e:
        read_rows(p)
    assert str(p) in str(e.value)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(DataFileError, match="line 2 is a JSON list"):
        read_rows(p)


@pytest.mark.parametrize(
    "payload,match",
    [
        ('{"a": 1, "b": 2}', "not a list of rows"),
        ('"just a string"', "not a list of objects"),
        ("42", "not a list of objects"),
        ("[1, 2, 3]", "item 0 is int"),
        ('[{"question": "q", "answer": "a"}, "x"]', "item 1 is str"),
        ('{"data": [1]}', 'under "data"'),
    ],
)
def test_json_that_is_not_a_list_of_objects(tmp_path, payload, match):
    p = tmp_path / "rows.json"
    p.write_text(payload, encoding="utf-8")
    with pytest.raises(DataFileError, match=match) as e:
        read_rows(p)
    assert str(p) in str(e.value)


def test_invalid_json(tmp_path):
    p = tmp_path / "rows.json"
    p.write_text('[{"question": "q",\n "answer": }]', encoding="utf-8")
    with pytest.raises(DataFileError, match="not valid JSON.*line 2"):
        read_rows(p)


def test_unsupported_suffix_and_directory(tmp_path):
    p = tmp_path / "rows.txt"
    p.write_text("hello", encoding="utf-8")
    with pytest.raises(DataFileError, match="unsupported file type '.txt'"):
        read_rows(p)
    with pytest.raises(DataFileError, match="is a folder"):
        read_rows(tmp_path)


def test_corrupt_parquet(tmp_path):
    p = tmp_path / "rows.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(DataFileError, match="not a readable Parquet file"):
        read_rows(p)


# --------------------------------------------------------------------------- load_rows


def test_load_rows_local_path_and_data_file(tmp_path, monkeypatch):
    import datasets

    def boom(*a, **k):  # pragma: no cover - must not be called
        raise AssertionError("hub must not be used for local files")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    p = tmp_path / "rows.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in ROWS), encoding="utf-8")
    assert load_rows(str(p)).to_list() == ROWS
    assert load_rows("openai/gsm8k", data_file=p).to_list() == ROWS
    with pytest.raises(MissingDataFileError):
        load_rows(str(tmp_path / "missing.jsonl"))


def test_load_rows_from_hub(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, *, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_rows("someone/some-math", split="test", config="main").to_list() == ROWS
    assert calls == [("someone/some-math", "main", "test")]


def _offline_errors():
    """What ``datasets.load_dataset`` raises here without network (checked with datasets 4.8.5:
    a builtin ConnectionError, "Couldn't reach ... on the Hub (OfflineModeIsEnabled)" with
    HF_HUB_OFFLINE=1, "(LocalEntryNotFoundError)" without), plus the hub client's own errors."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    return [
        ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)"),
        ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)"),
        OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled."),
    ]


@pytest.mark.parametrize("error", _offline_errors(), ids=["offline-mode", "no-network", "hub-client"])
def test_load_rows_hub_unreachable(monkeypatch, error):
    import datasets

    def offline(*a, **k):
        raise error

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(HubUnreachableError) as e:
        load_rows("openai/gsm8k", split="test", config="main")
    msg = str(e.value)
    assert "cannot reach the Hugging Face hub" in msg and "--data-file" in msg and "openai/gsm8k" in msg
    assert isinstance(e.value, ConnectionError) and isinstance(e.value, DataSourceError)


def test_load_rows_hub_dataset_not_found(monkeypatch):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    def missing(*a, **k):
        raise DatasetNotFoundError("Dataset 'nobody/nothing' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(DataSourceError, match="not found on the Hugging Face hub.*--data-file"):
        load_rows("nobody/nothing")


# --------------------------------------------------------------------------- rows_to_items


def test_rows_to_items_basic():
    rows = [
        {"problem": " What is 1+1? ", "sol": 2.0, "uid": "a", "level": "Level 3", "extra": "x"},
        {"problem": "What is 2+2?", "sol": "4", "uid": None, "level": 5},
    ]
    items, report = rows_to_items(
        rows, ColumnMap(question="problem", answer="sol", id="uid", difficulty="level"), source_name="toy"
    )
    assert items[0] == MathItem(question="What is 1+1?", gold="2", id="a", difficulty=3, source="toy")
    assert items[0].meta["extra"] == "x" and items[0].meta["raw_answer"] == 2.0
    assert items[1].id == "toy-1" and items[1].difficulty == 5 and items[1].gold == "4"
    assert (report.total, report.kept, report.n_skipped) == (2, 2, 0)
    assert str(report) == "toy: kept 2 of 2 rows"


def test_rows_to_items_gold_normalizer_and_limit():
    rows = [{"question": f"q{i}", "answer": f"00{i}"} for i in range(5)]
    items, report = rows_to_items(
        rows, ColumnMap(), source_name="toy", gold_normalizer=lambda a: a.lstrip("0") or "0", limit=2
    )
    assert [i.gold for i in items] == ["0", "1"]
    assert report.kept == 5  # the report counts the whole input
    with pytest.raises(ValueError, match="limit"):
        rows_to_items(rows, ColumnMap(), source_name="toy", limit=0)


def test_missing_column_names_column_available_and_config_key():
    rows = [{"problem": "q", "solution": "a", "level": 1}]
    with pytest.raises(ColumnMappingError) as e:
        rows_to_items(rows, ColumnMap(), source_name="toy")
    msg = str(e.value)
    assert "'question'" in msg and "'answer'" in msg
    assert "Available columns: 'problem', 'solution', 'level'" in msg
    assert "columns.question" in msg and "did you mean 'problem'" in msg

    with pytest.raises(ColumnMappingError, match="'uid'.*ColumnMap.id"):
        rows_to_items(rows, ColumnMap(question="problem", answer="solution", id="uid"), source_name="toy")


def test_bad_rows_skipped_and_counted(caplog):
    rows = [
        {"question": "ok", "answer": "1"},
        {"question": None, "answer": "1"},
        {"question": "   ", "answer": "1"},
        {"answer": "1"},
        {"question": "q", "answer": None},
        {"question": "q", "answer": ""},
        {"question": "q", "answer": float("nan")},
        {"question": "q"},
        {"question": "ok2", "answer": 0},
    ]
    with caplog.at_level(logging.WARNING, logger="thinkless_lite.data.files"):
        items, report = rows_to_items(rows, ColumnMap(), source_name="toy")
    assert [i.question for i in items] == ["ok", "ok2"] and items[1].gold == "0"
    assert isinstance(report, SkipReport)
    assert dict(report.skipped) == {
        "question is None": 1,
        "question is empty": 1,
        "question column missing": 1,
        "answer is None": 2,
        "answer is empty": 1,
        "answer column missing": 1,
    }
    assert (report.total, report.kept, report.n_skipped) == (9, 2, 7)
    assert "skipped 7" in str(report) and "answer is None: 2" in str(report)
    assert any("skipped 7" in r.getMessage() for r in caplog.records)


def test_gold_that_normalises_to_nothing_is_skipped():
    rows = [{"question": "q", "answer": "no marker"}, {"question": "q2", "answer": "#### 3"}]
    items, report = rows_to_items(
        rows, ColumnMap(), source_name="toy", gold_normalizer=lambda a: a.split("####")[1] if "####" in a else None
    )
    assert [i.gold for i in items] == ["3"]
    assert dict(report.skipped) == {"no gold answer after normalisation": 1}


def test_nothing_left_is_an_error():
    rows = [{"question": "q", "answer": None}, {"question": "", "answer": "1"}]
    with pytest.raises(NoUsableRowsError, match="no usable rows.*all 2.*answer is None: 1"):
        rows_to_items(rows, ColumnMap(), source_name="toy")
    with pytest.raises(NoUsableRowsError, match="no rows"):
        rows_to_items([], ColumnMap(), source_name="toy")


@pytest.mark.parametrize(
    "value,expected",
    [(3, 3), (3.0, 3), ("3", 3), ("Level 4", 4), ("level 2", 2), ("Level ?", None), (4.625, None), (None, None), (True, None)],
)
def test_parse_difficulty(value, expected):
    assert parse_difficulty(value) == expected


@pytest.mark.parametrize(
    "value,expected", [(" 12 ", "12"), (142.0, "142"), (-4.0, "-4"), (2.5, "2.5"), (7, "7"), (None, None), (float("nan"), None)]
)
def test_default_gold(value, expected):
    assert default_gold(value) == expected
