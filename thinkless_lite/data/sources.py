"""Reading rows from local files or the Hugging Face hub, and turning them into :class:`MathItem`.

Used by the RL stage (training questions), the warm-up's paired datasets and the benchmarks.

* :func:`read_rows` reads a local ``.json`` / ``.jsonl`` / ``.csv`` / ``.parquet`` file into a
  list of dicts, with errors that name the file, the place and the fix.
* :func:`load_rows` reads a local path, or a hub dataset id through ``datasets.load_dataset``
  (with a clear error when the hub cannot be reached, pointing at ``--data-file``).
* :func:`rows_to_items` maps columns (:class:`ColumnMap`) to :class:`MathItem`, skipping rows
  without a question or answer and counting why in a :class:`SkipReport`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from thinkless_lite.data.items import MathItem

__all__ = [
    "ColumnMap",
    "ColumnMappingError",
    "DataFileError",
    "DataSourceError",
    "GoldNormalizer",
    "HubUnreachableError",
    "MissingDataFileError",
    "NoUsableRowsError",
    "SUPPORTED_SUFFIXES",
    "SkipReport",
    "default_gold",
    "load_rows",
    "parse_difficulty",
    "read_rows",
    "rows_to_items",
]

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
# Keys under which a JSON object commonly holds its list of rows.
_LIST_KEYS = ("data", "rows", "examples", "items", "instances", "records", "train", "test")

GoldNormalizer = Callable[[Any], "str | None"]


# --------------------------------------------------------------------------- errors


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


# --------------------------------------------------------------------------- reading files


def _resolve(path: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(os.fspath(path)))


def _decode_utf8(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        bad = data[e.start : e.end].hex(" ")
        raise DataFileError(
            f"{path}: not valid UTF-8 at byte offset {e.start} (line {line}, column {col}: "
            f"byte(s) 0x{bad}). Re-save the file as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`."
        ) from None


def _check_objects(rows: list, path: Path, where: str) -> list[dict]:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataFileError(
                f"{path}: {where} must be a list of JSON objects (one per row), but item {i} is "
                f"{type(row).__name__} ({_preview(row)}). Write each row as "
                '{"question": ..., "answer": ...}.'
            )
    return rows


def _preview(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _parse_jsonl(text: str, path: Path) -> list[dict]:
    rows: list[dict] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFileError(
                f"{path}: line {lineno} is not valid JSON ({e.msg} at column {e.colno}): "
                f"{_preview(line)}. A .jsonl file needs one JSON object per line; fix or delete "
                f"that line (a JSON array belongs in a .json file)."
            ) from None
        if not isinstance(obj, dict):
            raise DataFileError(
                f"{path}: line {lineno} is a JSON {type(obj).__name__}, not an object: "
                f"{_preview(obj)}. A .jsonl file needs one JSON object per line."
            )
        rows.append(obj)
    return rows


def _parse_json(text: str, path: Path) -> list[dict]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            # Many ".json" files are really JSON Lines; accept them as such.
            try:
                return _parse_jsonl(text, path)
            except DataFileError:
                pass
        raise DataFileError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}). "
            f"Expected a JSON array of objects (or JSON Lines in a .jsonl file)."
        ) from None
    if isinstance(obj, list):
        return _check_objects(obj, path, "the JSON array")
    if isinstance(obj, dict):
        for key in _LIST_KEYS:
            if isinstance(obj.get(key), list):
                return _check_objects(obj[key], path, f'the list under "{key}"')
        lists = [k for k, v in obj.items() if isinstance(v, list)]
        if len(lists) == 1:
            return _check_objects(obj[lists[0]], path, f'the list under "{lists[0]}"')
        keys = ", ".join(map(repr, list(obj)[:20])) or "none"
        raise DataFileError(
            f"{path}: the JSON is an object, not a list of rows, and holds no single list of rows "
            f"(looked for keys {', '.join(_LIST_KEYS)}; top-level keys: {keys}). "
            f"Write the rows as a JSON array of objects, or under a \"data\" key."
        )
    raise DataFileError(
        f"{path}: the JSON is a {type(obj).__name__} ({_preview(obj)}), not a list of objects. "
        f"Write the rows as a JSON array of objects."
    )


def _parse_csv(text: str, path: Path) -> list[dict]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = [dict(r) for r in reader]
    except csv.Error as e:
        raise DataFileError(f"{path}: not a readable CSV file ({e}).") from None
    if reader.fieldnames is None:
        return []
    for lineno, row in enumerate(rows, start=2):
        if None in row:  # more cells than header columns
            raise DataFileError(
                f"{path}: row {lineno - 1} (around line {lineno}) has more cells than the header "
                f"({len(reader.fieldnames)} columns). Quote cells containing commas."
            )
    return rows


def _parse_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow ships with datasets
        raise DataFileError(f"{path}: reading .parquet needs pyarrow (`pip install pyarrow`).") from e
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError with varied messages
        raise DataFileError(
            f"{path}: not a readable Parquet file ({type(e).__name__}: {e}). "
            f"Check that it is not truncated, or convert it to .jsonl."
        ) from None


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Read a local ``.json``, ``.jsonl``, ``.csv`` or ``.parquet`` file into a list of dicts.

    A ``.json`` file may be an array of objects, an object holding such a list (under ``"data"``,
    ``"rows"``, ... or as its only list), or JSON Lines. Raises :class:`MissingDataFileError`
    (a ``FileNotFoundError``) for a missing file and :class:`DataFileError` for an empty file,
    non-UTF-8 bytes, malformed JSON/JSONL, or anything that is not a list of objects.
    """
    p = _resolve(path)
    if not p.exists():
        hint = f" (the folder {p.parent} does not exist either)" if not p.parent.exists() else ""
        raise MissingDataFileError(
            f"data file not found: {p}{hint}. Check the path (relative paths are resolved from "
            f"{Path.cwd()}) or download the dataset and pass its local copy."
        )
    if p.is_dir():
        raise DataFileError(f"{p} is a folder; pass a data file inside it ({', '.join(SUPPORTED_SUFFIXES)}).")
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataFileError(
            f"{p}: unsupported file type {suffix or '(no suffix)'!r}; use one of "
            f"{', '.join(SUPPORTED_SUFFIXES)} (rename the file if its content already is one)."
        )
    if p.stat().st_size == 0:
        raise DataFileError(f"{p}: the file is empty (0 bytes); it needs at least one row.")
    if suffix == ".parquet":
        rows = _parse_parquet(p)
    else:
        text = _decode_utf8(p.read_bytes(), p)
        if not text.strip():
            raise DataFileError(f"{p}: the file is empty (only whitespace); it needs at least one row.")
        if suffix == ".jsonl":
            rows = _parse_jsonl(text, p)
        elif suffix == ".json":
            rows = _parse_json(text, p)
        else:
            rows = _parse_csv(text, p)
    if not rows:
        raise DataFileError(f"{p}: the file holds no rows; it needs at least one row.")
    return rows


# --------------------------------------------------------------------------- local or hub


def _looks_local(source: str) -> bool:
    if source.startswith(("/", "./", "../", "~", ".\\", "..\\")):
        return True
    if Path(source).suffix.lower() in SUPPORTED_SUFFIXES:
        return True
    return _resolve(source).exists()


def _hub_connection_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        errors += [OfflineModeIsEnabled, LocalEntryNotFoundError]
    except ImportError:  # pragma: no cover
        pass
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:  # pragma: no cover
        pass
    try:
        import requests

        errors += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _hub_not_found_errors() -> tuple[type[BaseException], ...]:
    try:
        from datasets.exceptions import DatasetNotFoundError

        return (DatasetNotFoundError,)
    except ImportError:  # pragma: no cover
        return ()


def _dataset_to_rows(ds: Any, source: str) -> list[dict]:
    if isinstance(ds, Mapping):  # a DatasetDict: several splits
        raise DataSourceError(f"{source}: got several splits {list(ds)}; pass split=...")
    if hasattr(ds, "to_list"):
        return list(ds.to_list())
    return [dict(r) for r in ds]  # IterableDataset or a plain list


def load_rows(
    source: str,
    *,
    split: str = "train",
    config: str | None = None,
    data_file: str | os.PathLike | None = None,
) -> list[dict]:
    """Rows from a local file or a Hugging Face hub dataset.

    ``data_file`` (if given) or a ``source`` that is a local path (exists, starts with ``/``,
    ``./``, ``~``, or ends in a supported suffix) is read with :func:`read_rows`. Otherwise
    ``source`` is a hub dataset id, loaded with ``datasets.load_dataset(source, config,
    split=split)``. Raises :class:`HubUnreachableError` when the hub cannot be reached.
    """
    if data_file is not None:
        return read_rows(data_file)
    source = str(source).strip()
    if not source:
        raise DataSourceError("no data source given: pass a hub dataset id or a local file (--data-file).")
    if _looks_local(source):
        return read_rows(source)

    import datasets  # lazy: importing datasets is slow

    what = source + (f" (config {config!r}, split {split!r})" if config else f" (split {split!r})")
    try:
        ds = datasets.load_dataset(source, config, split=split)
    except _hub_not_found_errors() as e:
        raise DataSourceError(
            f"dataset {source!r} was not found on the Hugging Face hub ({e}). Check the id, log in "
            f"if it is gated, or pass a local copy with --data-file."
        ) from e
    except _hub_connection_errors() as e:
        raise HubUnreachableError(
            f"cannot reach the Hugging Face hub to load {what}: {type(e).__name__}: {e}. "
            f"This machine looks offline (or HF_HUB_OFFLINE=1 is set and the dataset is not "
            f"cached). Download the dataset elsewhere and pass the local copy with "
            f"--data-file PATH (.json, .jsonl, .csv or .parquet)."
        ) from e
    rows = _dataset_to_rows(ds, source)
    if not rows:
        raise DataSourceError(f"{what}: the hub dataset has no rows in that split.")
    return rows


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
        out = {"question": self.question, "answer": self.answer}
        if self.id is not None:
            out["id"] = self.id
        if self.difficulty is not None:
            out["difficulty"] = self.difficulty
        return out


@dataclass
class SkipReport:
    """How many rows were read (``total``), usable (``kept``, before any ``limit``) and skipped
    (``skipped``: reason -> count)."""

    source: str = ""
    total: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        head = f"{self.source}: " if self.source else ""
        text = f"{head}kept {self.kept} of {self.total} rows"
        if self.n_skipped:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
            text += f"; skipped {self.n_skipped} ({reasons})"
        return text


def default_gold(value: Any) -> str | None:
    """Gold as text: strings stripped, integral floats as integers (``142.0`` -> ``"142"``)."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value).strip()


_LEVEL_RE = re.compile(r"^\s*(?:level\s*)?([+-]?\d+(?:\.0*)?)\s*$", re.IGNORECASE)


def parse_difficulty(value: Any) -> int | None:
    """An integer difficulty from ``3``, ``3.0``, ``"3"`` or ``"Level 3"``; ``None`` otherwise
    (``"Level ?"``, ``4.625``, missing)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    m = _LEVEL_RE.match(str(value))
    return int(float(m.group(1))) if m else None


_ALIASES = {
    "question": ("problem", "question", "prompt", "input", "query"),
    "answer": ("answer", "solution", "gold", "target", "output", "final_answer"),
}


def _missing_column_error(
    missing: dict[str, str], available: Sequence[str], source: str, origin: str | None
) -> ColumnMappingError:
    where = f"{source} ({origin})" if origin else source
    parts = []
    for fld, col in missing.items():
        part = f"column {col!r} (ColumnMap.{fld}; config key `columns.{fld}`)"
        guess = [a for a in _ALIASES.get(fld, ()) if a in available and a != col]
        if guess:
            part += f" - did you mean {guess[0]!r}?"
        parts.append(part)
    avail = ", ".join(map(repr, available)) or "none"
    return ColumnMappingError(
        f"{where}: the rows have no {'; no '.join(parts)}. Available columns: {avail}. "
        f"Change the column mapping (`columns.<field>: <column>` in the config) to name "
        f"existing columns."
    )


def _is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _blank_reason(fld: str, row: dict, col: str) -> str | None:
    if col not in row:
        return f"{fld} column missing"
    value = row[col]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{fld} is None"
    if isinstance(value, str) and not value.strip():
        return f"{fld} is empty"
    return None


def rows_to_items(
    rows: Iterable[dict],
    columns: ColumnMap = ColumnMap(),
    *,
    source_name: str,
    gold_normalizer: GoldNormalizer | None = None,
    limit: int | None = None,
    difficulty_parser: Callable[[Any], int | None] | None = None,
    origin: str | None = None,
) -> tuple[list[MathItem], SkipReport]:
    """Map rows to :class:`MathItem` (question, gold, id, difficulty, source=``source_name``).

    Every mapped column must exist in at least one row (else :class:`ColumnMappingError` naming
    the missing and the available columns). Rows whose question or answer is missing, ``None``
    or empty -- or whose gold normalises to nothing -- are skipped and counted by reason in the
    :class:`SkipReport` (with one logged warning). ``limit`` keeps the first ``limit`` usable
    items (the report still counts the whole input). Raises :class:`NoUsableRowsError` if no
    row is usable. ``origin`` (e.g. the file path) is only used in messages.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    rows = list(rows)
    normalize = gold_normalizer or default_gold
    parse_level = difficulty_parser or parse_difficulty
    where = f"{source_name} ({origin})" if origin else source_name
    report = SkipReport(source=source_name, total=len(rows))
    if not rows:
        raise NoUsableRowsError(f"{where}: there are no rows to read.")

    available: dict[str, None] = {}
    for row in rows:
        if not isinstance(row, dict):
            raise DataSourceError(f"{where}: rows must be dicts, got {type(row).__name__}.")
        available.update(dict.fromkeys(row))
    missing = {fld: col for fld, col in columns.mapped().items() if col not in available}
    if missing:
        raise _missing_column_error(missing, list(available), source_name, origin)

    items: list[MathItem] = []
    mapped_cols = {columns.question, columns.answer}
    for index, row in enumerate(rows):
        reason = _blank_reason("question", row, columns.question) or _blank_reason(
            "answer", row, columns.answer
        )
        if reason is None:
            raw_answer = row[columns.answer]
            gold = normalize(raw_answer)
            if gold is None or not str(gold).strip():
                reason = "no gold answer after normalisation"
        if reason is not None:
            report.skipped[reason] += 1
            continue
        report.kept += 1
        if limit is not None and len(items) >= limit:
            continue
        row_id = row.get(columns.id) if columns.id is not None else None
        difficulty = parse_level(row.get(columns.difficulty)) if columns.difficulty else None
        meta = {k: v for k, v in row.items() if k not in mapped_cols}
        meta["row"] = index
        meta["raw_answer"] = raw_answer
        items.append(
            MathItem(
                question=str(row[columns.question]).strip(),
                gold=str(gold).strip(),
                id=str(row_id) if not _is_blank(row_id) else f"{source_name}-{index}",
                difficulty=difficulty,
                source=source_name,
                meta=meta,
            )
        )

    if report.n_skipped:
        logger.warning("%s", report if not origin else f"{report} [{origin}]")
    if not items:
        raise NoUsableRowsError(
            f"{where}: no usable rows - all {report.total} were skipped "
            f"({', '.join(f'{r}: {n}' for r, n in sorted(report.skipped.items()))}). Check the "
            f"column mapping (question={columns.question!r}, answer={columns.answer!r}) and the data."
        )
    return items, report
