"""One run of the GPU check in its own process: ``python -m benchmarks.gpu.worker SPEC.json``.

A process per (shape, backend) because ``import unsloth`` patches transformers and TRL for the whole
process (an hf run after it would not measure hf, and DeGRPOTrainer would refuse it), and because each
run then has its own peak-memory counters. The backend is chosen first, as the ``thinkless-lite`` CLI
does: ``select_backend("unsloth")`` imports Unsloth before anything imports transformers or TRL. Whatever
happens is written to the spec's result file (``ok``, ``skipped`` with the reason, ``oom``, ``error``
with the traceback); the parent never has to parse a crash.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run by path: make `benchmarks.gpu` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.gpu.common import GB
from benchmarks.gpu.loading import device_info


def execute(spec: dict) -> dict:
    record: dict = {"shape": spec["shape"], "backend": spec["backend"], "task": spec["task"]}
    try:
        import torch

        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        record["device"] = device_info()
        if spec["task"] == "build":
            from benchmarks.gpu.shapes import build_checkpoint

            record.update(status="ok", checkpoint=build_checkpoint(spec["shape"], Path(spec["checkpoint"])))
            return record
        from thinkless_lite.model import select_backend

        try:  # imports unsloth now, before transformers and TRL, when the backend is unsloth
            select_backend(spec["backend"])
        except RuntimeError as err:
            record.update(status="skipped", reason=str(err))
            return record
        if spec["task"] == "bench":
            from benchmarks.gpu.bench import run
        elif spec["task"] == "load":
            from benchmarks.gpu.smoke import run
        else:
            from benchmarks.gpu.verify import run
        run(spec, record)
        record["status"] = "ok"
    except BaseException as err:  # noqa: BLE001 - report, never crash the whole check
        oom = type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()
        record.update(status="oom" if oom else "error", error=f"{type(err).__name__}: {err}"[:2000],
                      traceback=traceback.format_exc()[-4000:])
        try:
            import torch

            if torch.cuda.is_available():
                record["memory_at_error"] = {"peak_allocated_gb": round(torch.cuda.max_memory_allocated() / GB, 3),
                                             "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / GB, 3)}
        except Exception:  # noqa: BLE001, S110 - the error above is what the record is about
            pass
    return record


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    record = execute(spec)
    Path(spec["result"]).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
