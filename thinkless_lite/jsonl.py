"""JSON-lines files that survive a kill: evaluation records, teacher answers, training metrics.

Every long job here appends one JSON object per line as it goes, so a rerun can resume from what is
on disk. A process killed mid-write leaves a torn last line: reading skips it, appending first cuts it
off (so the next line never glues onto a fragment). A broken line anywhere else is not a kill but a
damaged file, and reading it is an error that names the line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

log = logging.getLogger("thinkless_lite")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The objects of a JSONL file; [] when it does not exist; a torn last line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                log.info("%s: the last line is incomplete (interrupted write); it is ignored", path)
                continue
            raise ValueError(f"{path}:{number} is not valid JSON, and it is not the last line, so this is not an "
                             "interrupted write: the file is damaged. Delete that line (or the file) and rerun.") from None
    return rows


def drop_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (a kill mid-write) so that appends start on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append ``rows`` as JSON lines, flushed, after cutting a torn last line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(path)
    with path.open("a", encoding="utf-8") as sink:
        for row in rows:
            sink.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        sink.flush()


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Replace the file with ``rows`` atomically (write a temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)
