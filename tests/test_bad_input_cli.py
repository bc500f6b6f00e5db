"""Bad input on the command line, as a new user types it: an error on one line that names the input and the fix,
exit 2 (1 only for a failure the input could not predict), no traceback, and the folder it ran in exactly as it
was. Each input fails before any model loads.

Every case runs twice: in this process through ``cli.main`` (the fast suite: a fraction of a second each), and
through the installed console script in a fresh interpreter (marked slow but one: ~6 s each, nearly all of it
importing torch and transformers), which is what a user actually runs.

Cases (id: command):

- quickstart-unknown-recipe: quickstart --config nosuch
- quickstart-malformed-yaml: quickstart --config bad.yaml (an unclosed bracket)
- quickstart-rl-typo: quickstart --set rl.alpah=0.1 (caught before the warm-up trains)
- quickstart-greedy-rl: quickstart --set rl.temperature=0
- warmup-negative-max-steps: warmup --set warmup.max_steps=-5 (-1 is TRL's "use epochs")
- warmup-recipe-not-a-mapping: warmup --config list.yaml
- warmup-recipe-typo: warmup --config typo.yaml (max_step for max_steps)
- rl-wrong-int: rl --set rl.max_steps=ten
- warmup-share-out-of-range: warmup --set warmup.data.short_share=1.5
- warmup-zero-batch: warmup --set warmup.per_device_train_batch_size=0
- warmup-paired-without-path: warmup --set warmup.data.source=paired --out W
- rl-share-forces-nothing: rl --set rl.mode_balance=0.1 --set rl.num_generations=4 --out D
- rl-greedy: rl --set rl.temperature=0 --out D
- rl-share-out-of-range: rl --set rl.mode_balance=1.5
- rl-one-generation: rl --set rl.num_generations=1
- rl-centering-without-balance: rl --set rl.mode_balance=0
- rl-wrong-type: rl --set rl.alpha=high
- rl-override-without-value: rl --set rl.alpha
- rl-unknown-gold-format: rl --set rl.data.source=empty.jsonl --set rl.data.gold_format=latex --out D
- rl-missing-adapter-keeps-run: rl --adapter /nonexistent --out run (run holds a file of its own)
- eval-missing-adapter: eval --adapter /nonexistent
- eval-not-an-adapter: eval --adapter notadapter (a folder without adapter_config.json)
- eval-unknown-benchmark: eval --benchmarks nosuch
- eval-unknown-mode: eval --modes auto,sometimes
- eval-empty-data-file: eval --benchmarks gsm8k --data-file empty.jsonl
- eval-negative-limit: eval --limit -3
- eval-tau-out-of-range: eval --tau 1.5
- eval-sweep-not-numbers: eval --sweep-tau 0.1,half
- demo-missing-adapter: demo --adapter /nonexistent
- demo-port-out-of-range: demo --port 70000
- demo-zero-token-budget: demo --set demo.max_new_tokens=0
- export-missing-adapter: export --adapter /nonexistent --out X
- build-base-zero-steps: build-base --steps 0 --out base
- build-base-negative-steps: build-base --steps -3 --out base
- build-base-out-is-a-file: build-base --out notes.txt
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import user_env
from thinkless_lite.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "thinkless-lite"
NOWHERE = "/nonexistent"

# id: (arguments, exit code, what the error line must name). Paths are relative to the folder the command runs in.
CASES = {
    "quickstart-unknown-recipe": ("quickstart --config nosuch", 2, ["nosuch", "--config mini"]),
    "quickstart-malformed-yaml": ("quickstart --config bad.yaml", 2, ["bad.yaml", "line 3", "fix the file"]),
    "quickstart-rl-typo": ("quickstart --set rl.alpah=0.1 --out Q", 2,
                           ["unknown key rl.alpah (did you mean alpha?)"]),
    "quickstart-greedy-rl": ("quickstart --set rl.temperature=0 --out Q", 2, ["rl.temperature", "> 0"]),
    "warmup-negative-max-steps": ("warmup --set warmup.max_steps=-5 --out W", 2, ["warmup.max_steps", "-1", "-5"]),
    "warmup-recipe-not-a-mapping": ("warmup --config list.yaml", 2, ["list.yaml", "mapping of sections"]),
    "warmup-recipe-typo": ("warmup --config typo.yaml", 2,
                           ["unknown key warmup.max_step (did you mean max_steps?)"]),
    "warmup-share-out-of-range": ("warmup --set warmup.data.short_share=1.5", 2, ["warmup.data.short_share", "0..1"]),
    "warmup-zero-batch": ("warmup --set warmup.per_device_train_batch_size=0", 2,
                          ["warmup.per_device_train_batch_size", ">= 1"]),
    "warmup-paired-without-path": ("warmup --set warmup.data.source=paired --out W", 2,
                                   ["warmup.data.source=paired", "warmup.data.path"]),
    "rl-share-forces-nothing": ("rl --set rl.mode_balance=0.1 --set rl.num_generations=4 --out D", 2,
                                ["rl.mode_balance=0.1", "rl.num_generations=4", "at least 0.5"]),
    "rl-greedy": ("rl --set rl.temperature=0 --out D", 2, ["rl.temperature", "> 0", "eval.temperature=0"]),
    "rl-share-out-of-range": ("rl --set rl.mode_balance=1.5", 2, ["rl.mode_balance", "0..1"]),
    "rl-one-generation": ("rl --set rl.num_generations=1", 2, ["rl.num_generations", ">= 2"]),
    "rl-centering-without-balance": ("rl --set rl.mode_balance=0", 2, ["rl.mode_centering", "rl.mode_balance > 0"]),
    "rl-wrong-type": ("rl --set rl.alpha=high", 2, ["rl.alpha", "expected float", "'high'"]),
    "rl-wrong-int": ("rl --set rl.max_steps=ten", 2, ["rl.max_steps: expected int, got 'ten'"]),
    "rl-override-without-value": ("rl --set rl.alpha", 2, ["'rl.alpha'", "section.key=value"]),
    "rl-unknown-gold-format": ("rl --set rl.data.source=empty.jsonl --set rl.data.gold_format=latex --out D", 2,
                               ["rl.data.gold_format", "boxed", "'latex'"]),
    "rl-missing-adapter-keeps-run": (f"rl --adapter {NOWHERE} --out run", 2, [NOWHERE, "adapter_path", "runs/"]),
    "eval-missing-adapter": (f"eval --adapter {NOWHERE} --out E", 2, [NOWHERE, "no such adapter folder", "runs/"]),
    "eval-not-an-adapter": ("eval --adapter notadapter --out E", 2, ["notadapter", "adapter_config.json"]),
    "eval-unknown-benchmark": ("eval --benchmarks nosuch --out E", 2, ["'nosuch'", "gsm8k"]),
    "eval-unknown-mode": ("eval --modes auto,sometimes", 2, ["'sometimes'", "auto, think, short"]),
    "eval-empty-data-file": ("eval --benchmarks gsm8k --data-file empty.jsonl --out E", 2, ["empty.jsonl", "empty"]),
    "eval-negative-limit": ("eval --limit -3", 2, ["eval.limit", ">= 1", "-3"]),
    "eval-tau-out-of-range": ("eval --tau 1.5", 2, ["tau", "1.5"]),
    "eval-sweep-not-numbers": ("eval --sweep-tau 0.1,half", 2, ["--sweep-tau", "'0.1,half'"]),
    "demo-missing-adapter": (f"demo --adapter {NOWHERE}", 2, [NOWHERE, "no such adapter folder", "runs/"]),
    "demo-port-out-of-range": ("demo --port 70000", 2, ["demo.port", "70000"]),
    "demo-zero-token-budget": ("demo --set demo.max_new_tokens=0", 2, ["demo.max_new_tokens", ">= 1"]),
    "export-missing-adapter": (f"export --adapter {NOWHERE} --out X", 2, [NOWHERE, "no such adapter folder"]),
    "build-base-zero-steps": ("build-base --steps 0 --out base", 2, ["--steps", ">= 1", "got 0"]),
    "build-base-negative-steps": ("build-base --steps -3 --out base", 2, ["--steps", "got -3"]),
    "build-base-out-is-a-file": ("build-base --out notes.txt", 2, ["notes.txt", "is a file"]),
}


def user_folder(root: Path) -> Path:
    """A user's folder: the files the cases name, and a run folder of theirs."""
    (root / "bad.yaml").write_text("rl:\n  alpha: [0.1, 0.2\nwarmup: {}\n", encoding="utf-8")
    (root / "list.yaml").write_text("- rl\n- warmup\n", encoding="utf-8")
    (root / "typo.yaml").write_text("warmup:\n  max_step: 10\n", encoding="utf-8")
    (root / "notadapter").mkdir()
    (root / "notadapter" / "weights.txt").write_text("not an adapter", encoding="utf-8")
    (root / "run").mkdir()
    (root / "run" / "notes.txt").write_text("mine", encoding="utf-8")
    (root / "notes.txt").write_text("mine", encoding="utf-8")
    (root / "empty.jsonl").write_bytes(b"")
    return root


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def assert_one_line_error(stderr: str, returncode: int, case: str) -> None:
    """The case's exit code, and its error as the one and last line of stderr, naming what the case says."""
    _, code, named = CASES[case]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith(("config error: ", "error: "))]
    assert len(errors) == 1, stderr[-3000:]
    assert stderr.rstrip().endswith(errors[0]), stderr[-3000:]  # the last thing it says
    assert returncode == code, stderr[-3000:]
    for text in named:
        assert text in errors[0], (text, errors[0])


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_with_one_line_and_writes_nothing(case, tmp_path, monkeypatch, capfd):
    from thinkless_lite.cli import main

    root = user_folder(tmp_path)
    before = listing(root)
    monkeypatch.chdir(root)
    threads = torch.get_num_threads()
    try:
        returncode = main(CASES[case][0].split())
    except SystemExit as exit_:  # argparse's own exits
        returncode = exit_.code
    finally:
        torch.set_num_threads(threads)  # a stage sets the recipe's threads before it fails
    assert_one_line_error(capfd.readouterr().err, returncode, case)
    assert listing(root) == before


CONSOLE_SCRIPT_IN_FAST_SUITE = "rl-missing-adapter-keeps-run"


@pytest.mark.parametrize("case", [case if case == CONSOLE_SCRIPT_IN_FAST_SUITE else
                                  pytest.param(case, marks=pytest.mark.slow) for case in CASES])
def test_the_console_script_says_the_same_in_a_fresh_interpreter(case, tmp_path):
    root = user_folder(tmp_path)
    before = listing(root)
    done = subprocess.run([str(SCRIPT), *CASES[case][0].split()], cwd=root, capture_output=True, text=True,
                          timeout=120, env=user_env(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    assert_one_line_error(done.stderr, done.returncode, case)
    assert listing(root) == before


@pytest.mark.parametrize("generations", range(2, 17))
def test_the_smallest_share_the_error_names_is_accepted(generations):
    """What the mode-balance error tells the user to use must pass the same check."""
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"rl.num_generations={generations}", f"rl.mode_balance={1.9 / generations}"])
    smallest = re.search(r"use at least ([0-9.]+)", str(err.value)).group(1)
    load_config(None, [f"rl.num_generations={generations}", f"rl.mode_balance={smallest}"])
