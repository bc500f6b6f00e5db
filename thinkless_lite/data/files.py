"""Rows from a local file or the Hugging Face hub, as a ``datasets.Dataset``, and rows -> :class:`MathItem`.

Reading is ``datasets``' (``Dataset.from_json`` / ``from_csv`` / ``from_parquet`` for local files,
``load_dataset`` for the hub), so
rows stay Arrow-backed and a 220k-row hub dataset is never copied into Python lists. What is ours is
what a user needs when it fails: an error that names the file, the place and the fix (checked up front
where cheap, diagnosed after the fact where not), and the column mapping with a count of skipped rows.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from thinkless_lite.data.golds import GoldNormalizer, default_gold, parse_difficulty
from thinkless_lite.data.items import MathItem

logger = logging.getLogger(__name__)

BUILDERS = {".json": "from_json", ".jsonl": "from_json", ".csv": "from_csv", ".parquet": "from_parquet"}
SUPPORTED_SUFFIXES = tuple(BUILDERS)


class DataSourceError(ValueError):
    """Base class for every data-loading error raised here (a ``ValueError``)."""


class MissingDataFileError(DataSourceError, FileNotFoundError):
    """A local data file that does not exist (also a ``FileNotFoundError``)."""


class DataFileError(DataSourceError):
    """A local data file that exists but cannot be read as rows."""


class HubUnreachableError(DataSourceError, ConnectionError):
    """The Hugging Face hub could not be reached (also a ``ConnectionError``)."""


class ColumnMappingError(DataSourceError):
    """The column mapping names columns the rows do not have."""


class NoUsableRowsError(DataSourceError):
    """Every row was skipped."""


# --------------------------------------------------------------------------- local files

def _preview(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _utf8_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataFileError(
            f"{path}: not valid UTF-8 at byte offset {e.start} (line {line}, column {column}: byte(s) "
            f"0x{data[e.start:e.end].hex(' ')}). Re-save the file as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`.") from None


def _json_lines_problem(text: str, path: Path) -> str | None:
    """The first line of a JSON Lines text that is not a JSON object, described; None if all are."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            return (f"{path}: line {number} is not valid JSON ({e.msg} at column {e.colno}): {_preview(line)}. "
                    "A .jsonl file needs one JSON object per line; fix or delete that line "
                    "(a JSON array belongs in a .json file).")
        if not isinstance(obj, dict):
            return (f"{path}: line {number} is a JSON {type(obj).__name__}, not an object: {_preview(obj)}. "
                    "A .jsonl file needs one JSON object per line.")
    return None


def _json_rows_field(text: str, path: Path) -> str | None:
    """For a ``.json`` document: None when it is an array of objects (or JSON Lines), else the key of
    the one list of objects it holds (``{"data": [...]}``); anything else is a :class:`DataFileError`."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and _json_lines_problem(text, path) is None:
            return None  # a ".json" file that is really JSON Lines
        raise DataFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}). "
                            "Expected a JSON array of objects (or JSON Lines in a .jsonl file).") from None
    key, rows = None, obj
    if isinstance(obj, dict):
        lists = [k for k, v in obj.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataFileError(f"{path}: the JSON is an object, not a list of rows, and holds no single list of "
                                f"rows (top-level keys: {', '.join(map(repr, list(obj)[:20])) or 'none'}). "
                                'Write the rows as a JSON array of objects, or under a "data" key.')
        key, rows = lists[0], obj[lists[0]]
    if not isinstance(rows, list):
        raise DataFileError(f"{path}: the JSON is a {type(obj).__name__} ({_preview(obj)}), not a list of objects. "
                            "Write the rows as a JSON array of objects.")
    where = "the JSON array" if key is None else f'the list under "{key}"'
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataFileError(f"{path}: {where} must be a list of JSON objects (one per row), but item {i} is "
                                f'{type(row).__name__} ({_preview(row)}). Write each row as {{"question": ..., '
                                '"answer": ...}.')
    return key


def read_rows(path: str | os.PathLike):
    """A local ``.json`` (array, object holding one list, or JSON Lines), ``.jsonl``, ``.csv`` (every cell
    text) or ``.parquet`` file as a ``datasets.Dataset``. Missing, empty, non-UTF-8, malformed or
    row-less files raise :class:`MissingDataFileError` / :class:`DataFileError` saying what to fix."""
    import datasets

    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.exists():
        hint = f" (the folder {p.parent} does not exist either)" if not p.parent.exists() else ""
        raise MissingDataFileError(f"data file not found: {p}{hint}. Check the path (relative paths are resolved "
                                   f"from {Path.cwd()}) or download the dataset and pass its local copy.")
    if p.is_dir():
        raise DataFileError(f"{p} is a folder; pass a data file inside it ({', '.join(SUPPORTED_SUFFIXES)}).")
    suffix = p.suffix.lower()
    if suffix not in BUILDERS:
        raise DataFileError(f"{p}: unsupported file type {suffix or '(no suffix)'!r}; use one of "
                            f"{', '.join(SUPPORTED_SUFFIXES)} (rename the file if its content already is one).")
    if p.stat().st_size == 0:
        raise DataFileError(f"{p}: the file is empty (0 bytes); it needs at least one row.")
    options: dict = {}
    if suffix != ".parquet":
        text = _utf8_text(p)
        if not text.strip():
            raise DataFileError(f"{p}: the file is empty (only whitespace); it needs at least one row.")
        if suffix == ".jsonl" and (problem := _json_lines_problem(text, p)):
            raise DataFileError(problem)
        if suffix == ".json" and (key := _json_rows_field(text, p)):
            options["field"] = key
        if suffix == ".csv":  # CSV has no types: every cell is text ("007" stays "007")
            header = next(csv.reader(io.StringIO(text)), [])
            if len(set(header)) == len(header) and header:
                options["features"] = datasets.Features({name: datasets.Value("string") for name in header})
    try:
        rows = getattr(datasets.Dataset, BUILDERS[suffix])(str(p), **options)
    except Exception as err:  # noqa: BLE001 - datasets/pyarrow raise many kinds; the message names the file
        if "corresponds to no data" in str(err):
            raise DataFileError(f"{p}: the file holds no rows; it needs at least one row.") from None
        kind = {".parquet": "Parquet", ".csv": "CSV"}.get(suffix, "JSON")
        cause = err.__cause__ or err
        raise DataFileError(f"{p}: not a readable {kind} file ({type(cause).__name__}: {cause}). Check that it is "
                            "not truncated, or convert it to .jsonl.") from err
    if len(rows) == 0:
        raise DataFileError(f"{p}: the file holds no rows; it needs at least one row.")
    return rows


# --------------------------------------------------------------------------- local or hub

def _looks_local(source: str) -> bool:
    return (source.startswith(("/", "./", "../", "~", ".\\", "..\\")) or Path(source).suffix.lower() in BUILDERS
            or Path(os.path.expanduser(source)).exists())


def _hub_connection_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    errors += [OfflineModeIsEnabled, LocalEntryNotFoundError]
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def load_rows(source: str, *, split: str = "train", config: str | None = None,
              data_file: str | os.PathLike | None = None):
    """Rows from a local file (``data_file``, or a ``source`` that looks like a path) or a hub dataset id
    (``datasets.load_dataset(source, config, split=split)``). :class:`HubUnreachableError` offline."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    if data_file is not None:
        return read_rows(data_file)
    source = str(source).strip()
    if not source:
        raise DataSourceError("no data source given: pass a hub dataset id or a local file (--data-file).")
    if _looks_local(source):
        return read_rows(source)
    what = source + (f" (config {config!r}, split {split!r})" if config else f" (split {split!r})")
    try:
        rows = datasets.load_dataset(source, config, split=split)
    except DatasetNotFoundError as e:
        raise DataSourceError(f"dataset {source!r} was not found on the Hugging Face hub ({e}). Check the id, log "
                              "in if it is gated, or pass a local copy with --data-file.") from e
    except _hub_connection_errors() as e:
        raise HubUnreachableError(
            f"cannot reach the Hugging Face hub to load {what}: {type(e).__name__}: {e}. This machine looks offline "
            "(or HF_HUB_OFFLINE=1 is set and the dataset is not cached). Download the dataset elsewhere and pass "
            "the local copy with --data-file PATH (.json, .jsonl, .csv or .parquet).") from e
    if isinstance(rows, dict):  # a DatasetDict: several splits
        raise DataSourceError(f"{source}: got several splits {list(rows)}; pass split=...")
    if len(rows) == 0:
        raise DataSourceError(f"{what}: the hub dataset has no rows in that split.")
    return rows


def column_names(rows) -> list[str]:
    """The columns of a ``datasets.Dataset`` or of a list of dicts (every key of any row)."""
    if hasattr(rows, "column_names"):
        return list(rows.column_names)
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


# --------------------------------------------------------------------------- rows -> items

@dataclass(frozen=True)
class ColumnMap:
    """Which row columns hold the question, the answer, and optionally an id and a difficulty."""

    question: str = "question"
    answer: str = "answer"
    id: str | None = None
    difficulty: str | None = None

    def mapped(self) -> dict[str, str]:
        """``{field: column}`` for every mapped column."""
        return {k: v for k, v in {"question": self.question, "answer": self.answer, "id": self.id,
                                  "difficulty": self.difficulty}.items() if v is not None}


@dataclass
class SkipReport:
    """Rows read (``total``), usable (``kept``, before any ``limit``) and skipped (reason -> count)."""

    source: str = ""
    total: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        text = f"{self.source + ': ' if self.source else ''}kept {self.kept} of {self.total} rows"
        if self.n_skipped:
            text += f"; skipped {self.n_skipped} (" + ", ".join(
                f"{reason}: {n}" for reason, n in sorted(self.skipped.items())) + ")"
        return text


_ALIASES = {"question": ("problem", "question", "prompt", "input", "query"),
            "answer": ("answer", "solution", "gold", "target", "output", "final_answer")}


def _missing_columns(missing: dict[str, str], available: list[str], where: str) -> ColumnMappingError:
    parts = []
    for name, column in missing.items():
        guess = [a for a in _ALIASES.get(name, ()) if a in available and a != column]
        parts.append(f"column {column!r} (ColumnMap.{name}; config key `columns.{name}`)"
                     + (f" - did you mean {guess[0]!r}?" if guess else ""))
    return ColumnMappingError(f"{where}: the rows have no {'; no '.join(parts)}. Available columns: "
                              f"{', '.join(map(repr, available)) or 'none'}. Change the column mapping "
                              "(`columns.<field>: <column>` in the config) to name existing columns.")


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def _blank_reason(name: str, row: dict, column: str) -> str | None:
    if column not in row:
        return f"{name} column missing"
    value = row[column]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{name} is None"
    if isinstance(value, str) and not value.strip():
        return f"{name} is empty"
    return None


def rows_to_items(rows: Iterable[dict], columns: ColumnMap = ColumnMap(), *, source_name: str,
                  gold_normalizer: GoldNormalizer | None = None,
                  gold_from_row: Callable[[dict], str | None] | None = None, limit: int | None = None,
                  difficulty_parser: Callable[[Any], int | None] | None = None,
                  origin: str | None = None) -> tuple[list[MathItem], SkipReport]:
    """Map rows (a ``Dataset`` or dicts) to :class:`MathItem` (question, gold, id, difficulty, source).

    Every mapped column must exist (else :class:`ColumnMappingError` naming missing and available
    columns). Rows whose question or answer is missing, ``None`` or empty, or whose gold normalises
    to nothing, are skipped and counted by reason (one logged warning). The gold is
    ``gold_normalizer(row[answer])``, or ``gold_from_row(row)`` when a source reads it from several cells. ``limit`` keeps the first
    ``limit`` usable items; the report still counts the whole input. No usable row at all raises
    :class:`NoUsableRowsError`. ``origin`` (e.g. the file path) is only used in messages.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    normalize = gold_normalizer or default_gold
    parse_level = difficulty_parser or parse_difficulty
    where = f"{source_name} ({origin})" if origin else source_name
    if not isinstance(rows, list) and not hasattr(rows, "column_names"):
        rows = list(rows)
    if any(not isinstance(row, dict) for row in (rows if isinstance(rows, list) else ())):
        raise DataSourceError(f"{where}: rows must be dicts.")
    report = SkipReport(source=source_name, total=len(rows))
    if not report.total:
        raise NoUsableRowsError(f"{where}: there are no rows to read.")
    available = column_names(rows)
    missing = {name: column for name, column in columns.mapped().items() if column not in available}
    if missing:
        raise _missing_columns(missing, available, where)
    items: list[MathItem] = []
    mapped = {columns.question, columns.answer}
    for index, row in enumerate(rows):
        reason = _blank_reason("question", row, columns.question) or _blank_reason("answer", row, columns.answer)
        gold = None if reason else gold_from_row(row) if gold_from_row else normalize(row[columns.answer])
        if reason is None and (gold is None or not str(gold).strip()):
            reason = "no gold answer after normalisation"
        if reason is not None:
            report.skipped[reason] += 1
            continue
        report.kept += 1
        if limit is not None and len(items) >= limit:
            continue
        row_id = row.get(columns.id) if columns.id is not None else None
        meta = {k: v for k, v in row.items() if k not in mapped} | {"row": index, "raw_answer": row[columns.answer]}
        items.append(MathItem(question=str(row[columns.question]).strip(), gold=str(gold).strip(),
                              id=str(row_id) if not _is_blank(row_id) else f"{source_name}-{index}",
                              difficulty=parse_level(row.get(columns.difficulty)) if columns.difficulty else None,
                              source=source_name, meta=meta))
    if report.n_skipped:
        logger.warning("%s", report if not origin else f"{report} [{origin}]")
    if not items:
        raise NoUsableRowsError(
            f"{where}: no usable rows - all {report.total} were skipped ("
            + ", ".join(f"{r}: {n}" for r, n in sorted(report.skipped.items()))
            + f"). Check the column mapping (question={columns.question!r}, answer={columns.answer!r}) and the data.")
    return items, report
