"""The one JSONL reader/writer behind records, teacher answers and metrics: kills cost a line, never the file."""

import pytest

from thinkless_lite.jsonl import append_jsonl, read_jsonl, write_jsonl


def test_a_torn_last_line_is_skipped_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "r.jsonl"
    assert read_jsonl(path) == []
    append_jsonl(path, [{"a": 1}, {"a": 2}])
    path.write_text(path.read_text() + '{"a": 3, "b"')  # killed mid-write
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    append_jsonl(path, [{"a": 4}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 4}]
    assert path.read_text().endswith('{"a": 4}\n')


def test_a_broken_line_in_the_middle_is_damage_and_says_where(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2 is not valid JSON"):
        read_jsonl(path)


def test_write_replaces_atomically(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, [{"step": i} for i in range(5)])
    write_jsonl(path, [{"step": 0}, {"step": 1}])
    assert read_jsonl(path) == [{"step": 0}, {"step": 1}] and not path.with_suffix(".jsonl.tmp").exists()
