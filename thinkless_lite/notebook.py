"""Small helpers for the notebooks in ``notebooks/``: environment checks and display. No pipeline logic.

Everything a notebook trains, evaluates or serves is a call into the package (``warmup.main``,
``rl.main``, ``evaluate.evaluate``, ...). What lives here is what a notebook needs around those
calls: where am I running (Colab? which GPU? offline?), where is the repository checkout (recipes in
``configs/``, the demo in ``demo/``), turning parameters into config overrides, and showing results
(images, tables, adapter files, whether an adapter really changed).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

# ---------------------------------------------------------------- where are we running

def in_colab() -> bool:
    """True inside a Google Colab runtime (its kernel imports ``google.colab`` at start)."""
    return "google.colab" in sys.modules


def set_offline(offline: bool) -> bool:
    """Set (never unset) the hub-offline switches for this kernel; returns whether the kernel is offline.

    Call it before the first hub access: ``huggingface_hub`` reads the variable when it is imported, which is
    why :func:`thinkless_lite.export.hub.is_offline` (it imports ``huggingface_hub``) is imported only after.
    """
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    from thinkless_lite.export.hub import is_offline

    return is_offline()


def gpu_report() -> str:
    """One paragraph on the accelerator: device, memory, bf16, and which model backend ``auto`` picks."""
    import torch

    from thinkless_lite.model import select_backend

    lines = [f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        lines.append(f"GPU: {props.name} (compute capability {props.major}.{props.minor}), "
                     f"{total / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free; "
                     f"bf16 {'yes' if props.major >= 8 else 'no, pre-Ampere (fp16 is the fast choice)'}")
        # Capability, not torch.cuda.is_bf16_supported(): that also says True where bf16 is only emulated (T4).
    else:
        lines.append(f"no CUDA GPU: CPU with {os.cpu_count()} cores (fine for the mini-world; a 1.5B model needs a GPU)")
    choice = select_backend("auto")
    lines.append(f"model backend for backend=auto: {choice.name} ({choice.reason})")
    return "\n".join(lines)


# ---------------------------------------------------------------- a run folder that survives a disconnect

DRIVE_MOUNT = "/content/drive"
DRIVE_FOLDER = "thinkless-lite"  # under MyDrive


def run_folder(out: str | os.PathLike, use_drive: bool | None = None, mount_point: str | os.PathLike = DRIVE_MOUNT) -> Path:
    """Where the run lives. ``use_drive`` None (the default) means in Colab: Google Drive is mounted at
    ``mount_point`` (once) and a relative ``out`` goes under ``MyDrive/thinkless-lite/``, so a disconnect or a
    recycled VM keeps every checkpoint and rerunning the notebook resumes each stage from its last complete one.
    False: ``out`` as given, on this machine's disk (a Colab VM loses it). An absolute ``out`` is kept as given."""
    use = in_colab() if use_drive is None else use_drive
    out = Path(out)
    if not use or out.is_absolute():
        return out
    try:
        from google.colab import drive
    except ImportError as err:
        raise RuntimeError("USE_DRIVE = True needs Google Colab's google.colab.drive to mount Google Drive; set "
                           "USE_DRIVE = False to keep the run folder on this machine's disk") from err
    mount = Path(mount_point)
    if not (mount / "MyDrive").is_dir():
        drive.mount(str(mount))
    target = mount / "MyDrive" / DRIVE_FOLDER / out
    target.mkdir(parents=True, exist_ok=True)
    return target


def resume_report(run_dir: str | os.PathLike) -> str:
    """One line per stage: what a run of the notebook will do with what ``run_dir`` already holds (start, resume
    from a checkpoint, or find it done), so a rerun after a disconnect shows that nothing starts over."""
    from thinkless_lite.callbacks import last_complete_checkpoint

    run_dir = Path(run_dir)
    lines = [f"run folder: {run_dir}"]
    for stage in ("warmup", "rl"):
        checkpoint = last_complete_checkpoint(run_dir / stage / "checkpoints", remove_incomplete=False)
        if checkpoint:
            lines.append(f"{stage}: resumes from {Path(checkpoint).name} (a finished stage only saves its adapter again)")
        elif (run_dir / stage / "adapter" / "adapter_config.json").is_file():
            lines.append(f"{stage}: adapter saved, no checkpoint: it trains again from the start")
        else:
            lines.append(f"{stage}: starts")
    records = sorted((run_dir / "eval").glob("*/records.jsonl"))
    answers = sum(sum(1 for _ in path.open(encoding="utf-8")) for path in records)
    lines.append(f"eval: {answers} answers already written, reused" if answers else "eval: starts")
    return "\n".join(lines)


# ---------------------------------------------------------------- the repository checkout

def _is_checkout(folder: Path) -> bool:
    return (folder / "configs").is_dir() and (folder / "thinkless_lite").is_dir()


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The checkout holding ``configs/`` and ``thinkless_lite/``: ``start`` (default: cwd) or a parent,
    else the folder the imported package lives in. Raises with what to do when there is none."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if _is_checkout(folder):
            return folder
    package_parent = Path(__file__).resolve().parents[1]
    if _is_checkout(package_parent):
        return package_parent
    raise FileNotFoundError(
        f"no thinkless-lite checkout (a folder with configs/ and thinkless_lite/) at or above {here}. "
        "Clone https://github.com/thinkless-lite/thinkless-lite and start the notebook inside it "
        "(in Colab the install cell does this).")


def enter_repo_root(start: str | os.PathLike | None = None) -> Path:
    """``chdir`` into :func:`repo_root`, so recipe and data paths in the parameters are relative to it."""
    root = repo_root(start)
    os.chdir(root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def demo_module():
    """The demo's UI module (``demo/app.py`` of the repository, installed as ``thinkless_lite.demo.app``)."""
    return importlib.import_module("thinkless_lite.demo.app")


# ---------------------------------------------------------------- parameters -> config overrides

def as_overrides(values: Mapping[str, Any]) -> list[str]:
    """``{"rl.max_steps": 5, "eval.data_file": "a b.jsonl", "eval.tau": None}`` -> ``load_config`` overrides.

    The loader reads each value as YAML. Scalars are written as JSON (valid YAML), so strings stay
    strings (paths with spaces or colons included) and ``None`` becomes null; lists and dicts are
    written in YAML flow style, which keeps non-string keys (``{1: 0.7}`` stays an int-keyed dict).
    """
    import yaml

    def literal(value: Any) -> str:
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, (list, dict)):
            return yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
        return json.dumps(value)

    return [f"{key}={literal(value)}" for key, value in values.items()]


# ---------------------------------------------------------------- display

def show_image(path: str | os.PathLike, width: int | None = None) -> Path:
    """Display a PNG in the notebook (and say where it is); a missing file is an error, not a blank."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a plot at {path}, but there is no such file")
    print(f"{path}  ({path.stat().st_size / 1024:.0f} KiB)")
    try:
        from IPython.display import Image, display

        display(Image(filename=str(path), width=width))
    except ImportError:  # plain Python: the path printed above is all we can show
        pass
    return path


def show(obj) -> None:
    """``IPython.display.display`` when available, else ``print``."""
    try:
        from IPython.display import display

        display(obj)
    except ImportError:
        print(obj)


def show_markdown(text: str) -> None:
    """Render Markdown (a report.md, a table) in the notebook; print it elsewhere."""
    try:
        from IPython.display import Markdown, display

        display(Markdown(text))
    except ImportError:
        print(text)


def _short(value: Any, max_chars: int) -> Any:
    if value is None:  # no control token, no tau, no difficulty: a dash, not pandas' NaN
        return "—"
    if isinstance(value, str):
        value = value.replace("\n", "⏎ ")
        return value if len(value) <= max_chars else value[: max_chars - 1] + "…"
    if isinstance(value, float):
        return round(value, 3)
    return value


def table(rows: Iterable[Any], columns: Sequence[str] | None = None, max_chars: int = 90):
    """Rows (dicts, dataclasses or objects with ``to_dict``) as a pandas DataFrame: long text shortened, None as "—"."""
    import dataclasses

    import pandas as pd

    records = []
    for row in rows:
        if hasattr(row, "to_dict"):
            row = row.to_dict()
        elif dataclasses.is_dataclass(row):
            row = dataclasses.asdict(row)
        records.append({k: _short(v, max_chars) for k, v in dict(row).items() if columns is None or k in columns})
    frame = pd.DataFrame.from_records(records)
    return frame[list(columns)] if columns is not None and len(frame) else frame


def list_files(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """(name, bytes) of every file under ``folder``, printed as a listing; an empty or missing folder is an error."""
    folder = Path(folder)
    files = sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no files under {folder}")
    print(f"{folder}:")
    for name, size in files:
        print(f"  {name:<40} {size / 2**20:9.2f} MiB")
    return files


def compare_adapters(before: str | os.PathLike | None, after: str | os.PathLike) -> dict:
    """Compare two saved adapters tensor by tensor (``adapter_model.safetensors``).

    ``before=None`` stands for a freshly initialised LoRA adapter, whose ``lora_B`` matrices are all
    zero: then the ``lora_B`` tensors of ``after`` are compared with zero. Returns ``{"tensors",
    "changed", "unchanged", "max_abs_diff", "most_changed", "only_in_before", "only_in_after"}``; a
    training stage that really updated its adapter shows ``changed > 0``.
    """
    import torch
    from safetensors.torch import load_file

    def weights(folder) -> dict:
        path = Path(folder) / "adapter_model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no adapter_model.safetensors in {folder}")
        return load_file(str(path))

    b = weights(after)
    a = weights(before) if before is not None else {n: torch.zeros_like(t) for n, t in b.items() if "lora_B" in n}
    if not a:
        raise ValueError(f"nothing to compare: {after} has no lora_B tensors")
    common = sorted(set(a) & set(b))
    diffs = {name: float((a[name].float() - b[name].float()).abs().max()) if a[name].shape == b[name].shape
             else float("inf") for name in common}
    changed = sorted(name for name, d in diffs.items() if d > 0)
    return {"tensors": len(common), "changed": len(changed), "unchanged": len(common) - len(changed),
            "max_abs_diff": max(diffs.values(), default=0.0),
            "most_changed": sorted(changed, key=lambda n: -diffs[n])[:5],
            "only_in_before": sorted(set(a) - set(b)),
            "only_in_after": sorted(set(b) - set(a)) if before is not None else []}


def gpu_memory() -> str:
    """Allocated / peak / total CUDA memory, or a note that there is no GPU."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU (CPU run)"
    total = torch.cuda.get_device_properties(0).total_memory
    return (f"GPU memory: {torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated, "
            f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, of {total / 2**30:.1f} GiB")


def free_memory() -> None:
    """Collect garbage and release cached GPU memory (after ``del model``), so the next stage fits on a T4."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
