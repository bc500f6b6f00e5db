"""What an export folder holds (file names) and where one may go; the errors exports raise; its progress
lines."""

from __future__ import annotations

from pathlib import Path

MARKER = "thinkless_export.json"
CARD = "README.md"
REPORT_COPY = "eval_report.json"
RECIPE_COPY = "training_recipe.yaml"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ExportError(RuntimeError):
    """An export that cannot go ahead as asked; the message says what to do instead."""


class ExportRunError(ExportError):
    """An export that failed on the way although asked rightly (a push, loading the base, the merge)."""


def say(message: str) -> None:
    """A progress line (export steps take seconds to minutes on a real model)."""
    print(f"export: {message}", flush=True)


def check_out(out: Path, adapter: Path | None, overwrite: bool) -> None:
    """``out`` may be written: outside the adapter, and new, empty or (``overwrite``) a previous export."""
    if adapter is not None:
        here = adapter.resolve()
        target = out.resolve()
        if target == here or here in target.parents:
            raise ExportError(f"--out {out} is inside the adapter folder {adapter}; choose a folder outside it, "
                              f"e.g. --out {adapter.parent / 'export'}")
        if target in here.parents:
            raise ExportError(f"--out {out} contains the adapter {adapter}; choose a new folder, e.g. "
                              f"--out {adapter.parent / 'export'}")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ExportError(f"--out {out} exists and is not empty (and is not a previous export); choose a new or "
                              "empty folder")
        if not overwrite:
            raise ExportError(f"--out {out} already holds an export; choose a new folder, or pass --overwrite to replace it")

