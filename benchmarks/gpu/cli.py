"""The parent: reads the arguments, builds each shape's checkpoint once, runs one worker process per
(shape, backend), keeps to the time budget, and writes the JSON and Markdown reports.

It never touches the GPU itself (``torch.cuda.is_available()`` creates no context). A worker that fails,
runs out of memory or overruns is reported as such and the other runs go on; with ``--stop-at`` a run
that cannot start before the deadline is reported skipped, so the reports are always written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.gpu.common import BACKENDS, DEFAULT_CONFIG, REPO, split_list
from benchmarks.gpu.report import (
    FAILED_RUN,
    TARGET_PEAK_GB,
    TARGET_SPEEDUP,
    load_checks,
    markdown,
    targets,
    verdict,
    verify_checks,
)
from benchmarks.gpu.shapes import SHAPES

EXPECTED_VERSIONS = {
    "python": "3.12", "torch": ">=2.4,<2.15 (CUDA build)", "transformers": "5.17.0", "trl": "1.15.0",
    "peft": "0.21.2", "bitsandbytes": "0.50.2", "accelerate": "1.15.0", "datasets": "4.8.5",
    "unsloth": "2026.10.9", "unsloth_zoo": "2026.10.9",
}
MIN_START_S = 30  # a run is not started with less time than this left before --stop-at


def installed_versions() -> dict[str, str | None]:
    """Installed distributions, read from metadata (nothing is imported)."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "unsloth",
                 "unsloth_zoo", "triton"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu",
                                description="One real DeGRPO step per backend (hf, unsloth) on Qwen2.5-1.5B/7B-shaped "
                                            "random checkpoints: peak memory, step time, and --verify-loss. "
                                            "See docs/gpu.md.")
    p.add_argument("--shapes", default="1.5b,7b", help=f"comma list of {', '.join(SHAPES)} (default 1.5b,7b)")
    p.add_argument("--tiny", action="store_true", help="the tiny Qwen2 shape only (CPU smoke runs); --shapes "
                                                       "tiny-untied for its untied twin")
    p.add_argument("--backends", default="hf,unsloth", help=f"comma list of {', '.join(BACKENDS)} (default both)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when torch sees one")
    p.add_argument("--verify-loss", action="store_true", help="the loss/gradient check instead of timed steps")
    p.add_argument("--load-only", action="store_true",
                   help="part (a): imports, load_model, control rows trainable, one backward (no trainer)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run (default 3)")
    p.add_argument("--warmup-steps", type=int, default=1, help="first steps left out of the medians when more ran")
    p.add_argument("--prompt-len", type=int, default=256, help="longest prompt; the others go down to half of it")
    p.add_argument("--completion-len", type=int, default=1024, help="forced completion length (default 1024)")
    p.add_argument("--generations", type=int, default=4, help="completions per prompt, the group (default 4, the recipe's)")
    p.add_argument("--prompts", type=int, default=4, help="prompts per optimizer step (default 4, the recipe's)")
    p.add_argument("--grad-accum", type=int, default=None,
                   help="micro-batches per step (default: the recipe's rl.gradient_accumulation_steps)")
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="override the recipe's model setting")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="recipe whose model/rl settings are used")
    p.add_argument("--verify-alpha", type=float, default=0.5, help="DeGRPO alpha of the --verify-loss batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: 1 on --device cpu)")
    p.add_argument("--out", default="runs/gpu_step/results.json", help="JSON output; Markdown goes beside it")
    p.add_argument("--md", default=None, help="Markdown output (default: --out with .md)")
    p.add_argument("--work-dir", default=None, help="checkpoints and worker logs (default: a temporary folder)")
    p.add_argument("--keep-work", action="store_true", help="keep the checkpoints (a later run with this --work-dir "
                                                            "reuses them)")
    p.add_argument("--worker-timeout", type=int, default=7200, help="seconds per worker process")
    p.add_argument("--stop-at", type=float, default=None,
                   help="Unix time by which every worker must have ended (scripts/gpu_check.sh's budget)")
    p.add_argument("--in-process", action="store_true",
                   help="run the workers in this process (tests, debugging): no isolation between backends")
    p.add_argument("-v", "--verbose", action="store_true", help="show workers' output instead of logging it")
    return p


def _run_process(command: list[str], env: dict, log_path: Path, timeout: float, verbose: bool) -> int | str:
    """The worker in its own process group, so that an overrun also ends its compiler subprocesses."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=None if verbose else log, stderr=None if verbose else subprocess.STDOUT,
                                env=env, cwd=str(REPO), start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout"


def spawn(spec: dict, work: Path, args) -> dict:
    """Run one worker; its record, or an error / timeout / skipped record with the log's tail."""
    tag = f"{spec['task']}-{spec['shape']}-{spec['backend']}"
    base = {"shape": spec["shape"], "backend": spec["backend"], "task": spec["task"]}
    timeout = float(args.worker_timeout)
    if args.stop_at is not None:
        left = args.stop_at - time.time()
        if left < MIN_START_S:
            print(f"[gpu_step] {tag}: skipped (time budget spent)", flush=True)
            return {**base, "status": "skipped", "reason": f"time budget spent ({max(left, 0):.0f} s left at its turn)"}
        timeout = min(timeout, left - 5)
    run_dir = work / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "work_dir": str(run_dir), "result": str(run_dir / "result.json")}
    result, log_path = Path(spec["result"]), run_dir / "log.txt"
    result.unlink(missing_ok=True)  # never read a result left by an earlier run
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=2))
    began = time.perf_counter()
    if args.in_process:
        from benchmarks.gpu.worker import execute

        print(f"[gpu_step] {tag}: running in this process", flush=True)
        result.write_text(json.dumps(execute(spec), indent=2, default=str) + "\n")
        rc: int | str = 0
    else:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        if args.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        print(f"[gpu_step] {tag}: running (log {log_path}, at most {timeout:.0f} s)", flush=True)
        rc = _run_process([sys.executable, "-m", "benchmarks.gpu.worker", str(run_dir / "spec.json")], env, log_path,
                          timeout, args.verbose)
    if result.exists():
        record = json.loads(result.read_text())
    elif rc == "timeout":
        record = {**base, "status": "timeout", "error": f"ended after {timeout:.0f} s (worker timeout or time budget)"}
    else:
        record = {**base, "status": "error", "error": f"worker exited ({rc}) without a result"}
    if record.get("status") in FAILED_RUN and log_path.exists():
        record.setdefault("log_tail", log_path.read_text(errors="replace")[-3000:])
    record["worker_wall_s"] = round(time.perf_counter() - began, 2)
    print(f"[gpu_step] {tag}: {record.get('status')}"
          + (f" ({record.get('reason') or record.get('error')})" if record.get("status") != "ok" else ""), flush=True)
    return record


def _skip_up_front(backend: str, device: str, cuda_available: bool) -> str | None:
    if device == "cuda" and not cuda_available:
        return "--device cuda but torch sees no CUDA GPU"
    if backend == "unsloth" and device != "cuda":
        return "no CUDA GPU (Unsloth needs one)" + ("; --device cpu" if cuda_available else "")
    return None


def _settings(args, mode: str, shapes: list[str], backends: list[str], grad_accum: int, recipe) -> dict:
    config = os.path.relpath(args.config, REPO) if Path(args.config).is_absolute() else args.config
    return {"mode": mode, "device": args.device, "shapes": shapes, "backends": backends,
            "prompt_len": args.prompt_len, "completion_len": args.completion_len, "generations": args.generations,
            "prompts": args.prompts, "grad_accum": grad_accum, "steps": args.steps if mode == "bench" else 1,
            "warmup_steps": args.warmup_steps, "config": config, "rl_max_steps": recipe.rl.trl["max_steps"],
            "gradient_checkpointing": not args.no_gradient_checkpointing and recipe.model.gradient_checkpointing,
            "verify_alpha": args.verify_alpha if args.verify_loss else None, "gb": "10^9 bytes"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch  # the parent never touches the GPU: is_available() creates no context

    cuda_available = torch.cuda.is_available()
    args.device = args.device or ("cuda" if cuda_available else "cpu")
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if args.in_process and args.device == "cpu" and cuda_available:
        raise SystemExit("--in-process cannot hide the GPU from torch: drop --in-process or use --device cuda")
    mode = "verify-loss" if args.verify_loss else "load" if args.load_only else "bench"
    shapes = ["tiny"] if args.tiny else split_list(args.shapes)
    backends = split_list(args.backends)
    for name in shapes:
        if name not in SHAPES:
            raise SystemExit(f"unknown shape {name!r}; choose from {', '.join(SHAPES)}")
    for name in backends:
        if name not in BACKENDS:
            raise SystemExit(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)} (unsloth imports Unsloth "
                             "first, as the CLI does; importing it after TRL is refused by DeGRPOTrainer)")
    if args.verify_loss and "hf" in backends:  # hf first: the others are compared with it
        backends = ["hf"] + [b for b in backends if b != "hf"]
    from thinkless_lite.config import load_config

    recipe = load_config(args.config)
    grad_accum = 1 if mode != "bench" else (args.grad_accum or recipe.rl.trl["gradient_accumulation_steps"])
    if (args.prompts * args.generations) % grad_accum:
        raise SystemExit(f"--prompts x --generations ({args.prompts * args.generations}) must be divisible by the "
                         f"gradient accumulation ({grad_accum}); pass --grad-accum")
    out = Path(args.out)
    md_path = Path(args.md) if args.md else out.with_suffix(".md")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu_step_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "script": "python -m benchmarks.gpu", "argv": sys.argv[1:] if argv is None else list(argv),
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "versions": installed_versions(), "expected_versions": EXPECTED_VERSIONS,
        "settings": _settings(args, mode, shapes, backends, grad_accum, recipe),
        "targets_spec": {"peak_reserved_gb": TARGET_PEAK_GB, "unsloth_speedup_vs_hf": TARGET_SPEEDUP},
        "device": {"name": None}, "checkpoints": {}, "runs": [],
    }
    common = {"config": str(Path(args.config).resolve()), "prompt_len": args.prompt_len,
              "completion_len": args.completion_len, "generations": args.generations, "prompts": args.prompts,
              "grad_accum": grad_accum, "steps": args.steps, "warmup_steps": args.warmup_steps,
              "threads": args.threads, "seed": args.seed, "verify_alpha": args.verify_alpha,
              "gradient_checkpointing": False if args.no_gradient_checkpointing else None}
    try:
        for shape in shapes:
            checkpoint = work / f"ckpt-{shape}"
            for backend in backends:
                base = {"shape": shape, "backend": backend, "task": {"bench": "bench", "load": "load"}.get(mode, "verify")}
                reason = _skip_up_front(backend, args.device, cuda_available)
                if reason:
                    results["runs"].append({**base, "status": "skipped", "reason": reason})
                    print(f"[gpu_step] {shape}/{backend}: skipped ({reason})", flush=True)
                    continue
                spec = {**base, **common, "checkpoint": str(checkpoint)}
                if not (checkpoint / "config.json").exists():
                    built = results["checkpoints"].get(shape) or spawn({**spec, "task": "build", "backend": "build"},
                                                                       work, args)
                    results["checkpoints"][shape] = built
                    if built.get("status") != "ok":
                        results["runs"].append({**base, "status": built.get("status", "error"),
                                                "error": f"building the checkpoint: {_why(built)}",
                                                "log_tail": built.get("log_tail")})
                        continue
                record = spawn(spec, work, args)
                if record.get("device", {}).get("name") and not results["device"]["name"]:
                    results["device"] = record["device"]
                results["runs"].append(record)
        if results["device"]["name"] is None:
            results["device"] = {"name": "CPU" if args.device == "cpu" else "no CUDA GPU", "cuda": cuda_available}
        if mode == "bench":
            results["targets"] = targets(results)
            failed = any(r.get("status") in FAILED_RUN for r in results["runs"])
        else:
            results["checks"] = verify_checks(results) if mode == "verify-loss" else load_checks(results)
            results["verdict"] = verdict(results["checks"])
            failed = results["verdict"] != "PASS"
    finally:
        if not args.keep_work:
            for folder in [work] if not args.work_dir else work.glob("ckpt-*"):
                shutil.rmtree(folder, ignore_errors=True)
    for run in results["runs"]:
        run.pop("grads_file", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown(results))
    print(markdown(results))
    print(f"[gpu_step] wrote {out} and {md_path}")
    return 1 if failed else 0


def _why(record: dict) -> str:
    return str(record.get("reason") or record.get("error") or record.get("status"))


if __name__ == "__main__":
    sys.exit(main())
