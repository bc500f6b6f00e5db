"""The Colab notebooks: structure checks (fast) and headless end-to-end runs (slow).

The slow tests execute each notebook with nbclient on CPU, papermill style: a cell tagged
``injected-parameters`` is inserted right after the cell tagged ``parameters`` and overrides its
values (tiny sizes, a tmp run folder, local data files). The T4 notebook runs on the mini-world model
with the offline benchmark copies, so every cell's code path runs here; only the Colab install cell
and the hub push skip themselves, and say so. Executed notebooks are kept in ``artifacts/notebooks/``.
"""

from __future__ import annotations

import ast
import re
import json
import os
import time
from pathlib import Path

import nbformat
import pytest

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
QUICKSTART = NOTEBOOKS / "quickstart.ipynb"
T4 = NOTEBOOKS / "colab_t4_r1_distill_1.5b.ipynb"
ALL = [QUICKSTART, T4]
COLAB_URL = "https://colab.research.google.com/github/thinkless-lite/thinkless-lite/blob/main/notebooks/{}"
CELL_TIMEOUT = 600  # seconds per cell; each notebook takes a few minutes on 2 cores


# ---------------------------------------------------------------- helpers

def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def parameter_values(nb: nbformat.NotebookNode) -> dict:
    """The literal assignments of the ``parameters`` cell."""
    cell = nb.cells[0]
    values = {}
    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, \
            f"the parameters cell should hold plain assignments only, got: {ast.unparse(node)}"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def inject_parameters(nb: nbformat.NotebookNode, **values) -> nbformat.NotebookNode:
    """Insert a cell tagged ``injected-parameters`` after the ``parameters`` cell (what papermill does)."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    known = parameter_values(nb)
    unknown = sorted(set(values) - set(known))
    assert not unknown, f"not parameters of this notebook: {unknown}"
    source = "# Parameters injected by tests/test_notebooks.py\n" + "".join(
        f"{name} = {value!r}\n" for name, value in values.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)
    return nb


def execute(path: Path, artifacts: Path, monkeypatch, may_fail: tuple[str, ...] = (),
            **values) -> tuple[nbformat.NotebookNode, float]:
    """Run the notebook headless (cwd: notebooks/, like Jupyter) with the kernel offline; save the result.

    Cells whose source contains one of ``may_fail`` get nbclient's ``raises-exception`` tag: an error
    there is recorded in the outputs (for the test to judge) and the run goes on.
    """
    from nbclient import NotebookClient

    for name, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                        "GRADIO_ANALYTICS_ENABLED": "False"}.items():
        monkeypatch.setenv(name, value)
    nb = inject_parameters(read(path), **values)
    for cell in nb.cells:
        if cell.cell_type == "code" and any(snippet in cell.source for snippet in may_fail):
            cell.metadata.setdefault("tags", []).append("raises-exception")
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    out = artifacts / "notebooks"
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    try:
        client.execute()
    finally:
        nbformat.write(nb, out / path.name.replace(".ipynb", ".executed.ipynb"))
    return nb, time.time() - began


def cell_text(cell) -> str:
    """Everything a code cell showed: streams, results (Markdown as its source), errors."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            data = output.get("data", {})
            parts.append(data.get("text/markdown") or data.get("text/plain", ""))
        elif output.output_type == "error":
            parts.append("\n".join(output.traceback))
    return "".join(parts)


def cell_containing(nb, snippet: str):
    """The executed code cell whose source contains ``snippet`` (exactly one)."""
    found = [c for c in nb.cells if c.cell_type == "code" and snippet in c.source]
    assert len(found) == 1, f"{len(found)} code cells contain {snippet!r}"
    return found[0]


def images(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


# ---------------------------------------------------------------- structure (fast)

def fake_colab_drive(folder: Path) -> Path:
    """A stand-in for Colab's ``google.colab.drive`` under ``folder`` (put it on ``sys.path``/``PYTHONPATH``): its
    ``mount(path)`` "mounts" Google Drive by linking ``path/MyDrive`` to ``folder/drive_store``, which outlives
    the link as a Drive outlives a VM. ``google`` stays a namespace package (an installed ``google.protobuf``
    still imports)."""
    colab = folder / "google" / "colab"
    colab.mkdir(parents=True, exist_ok=True)
    (colab / "__init__.py").write_text("")
    (colab / "drive.py").write_text(
        "from pathlib import Path\n\nSTORE = Path(__file__).resolve().parents[2] / 'drive_store'\n\n\n"
        "def mount(mountpoint, **kwargs):\n"
        "    STORE.mkdir(exist_ok=True)\n"
        "    Path(mountpoint).mkdir(parents=True, exist_ok=True)\n"
        "    Path(mountpoint, 'MyDrive').symlink_to(STORE, target_is_directory=True)\n"
        "    print(f'Mounted at {mountpoint}')\n")
    return folder


def run_install_cell(path: Path, in_colab: bool, monkeypatch, tmp_path: Path) -> tuple[list[str], str]:
    """Execute a notebook's install cell as IPython would (``!`` and ``%`` lines become calls), recording the
    shell commands instead of running them, with the parameters cell's values and, in "Colab", a stand-in for
    Google Drive mounted under ``tmp_path``; returns (commands, what it printed)."""
    import contextlib
    import io
    import sys
    import types

    from IPython.core.inputtransformer2 import TransformerManager

    cell = read(path).cells[1]
    commands: list[str] = []
    shell = types.SimpleNamespace(system=commands.append, run_line_magic=lambda name, line: commands.append(f"%{name} {line}"))
    for name in ("google.colab", "google.colab.drive"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    if in_colab:
        monkeypatch.syspath_prepend(str(fake_colab_drive(tmp_path / "fake_colab")))
        import google.colab.drive  # noqa: F401  (the kernel of a Colab runtime has google.colab imported)
    values = {**parameter_values(read(path)), "get_ipython": lambda: shell}
    if "DRIVE_MOUNT" in values:
        values["DRIVE_MOUNT"] = str(tmp_path / "drive")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(TransformerManager().transform_cell(cell.source), values)  # noqa: S102
    for name in ("google.colab", "google.colab.drive", "google"):
        sys.modules.pop(name, None)  # the stand-in must not outlive the test
    return commands, printed.getvalue()


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_the_install_cell_installs_in_colab_and_nothing_elsewhere(path, monkeypatch, tmp_path):
    commands, printed = run_install_cell(path, in_colab=True, monkeypatch=monkeypatch, tmp_path=tmp_path)
    assert any(c.startswith("test -d /content/thinkless-lite || git clone") for c in commands), commands
    assert any(c.startswith("%cd /content/thinkless-lite") for c in commands), commands
    assert any(re.search(r"pip install .*-e \"?\.", c) for c in commands), commands  # this checkout, editable
    if path == T4:  # in Colab the run folder lives on Drive, mounted by the install cell
        on_drive = tmp_path / "drive" / "MyDrive" / "thinkless-lite" / "runs" / "r1-1.5b-t4"
        assert f"run folder: {on_drive}" in printed and on_drive.is_dir(), printed
    commands, printed = run_install_cell(path, in_colab=False, monkeypatch=monkeypatch, tmp_path=tmp_path)
    assert commands == [] and "Not running in Colab: skipping the install" in printed
    if path == T4:
        assert "run folder: runs/r1-1.5b-t4" in printed and "warmup: starts" in printed, printed


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_notebook_structure(path):
    nb = read(path)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", []), \
        "the first cell must be the papermill `parameters` cell"
    assert parameter_values(nb), "the parameters cell assigns nothing"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert COLAB_URL.format(path.name) in "".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert not cell.get("outputs") and cell.get("execution_count") is None, \
            "notebooks are stored without outputs"
        # No logic of their own: no function or class definitions; pipeline code lives in thinkless_lite.
        for line in cell.source.splitlines():
            assert not line.lstrip().startswith(("def ", "class ", "lambda ")), f"{path.name}: {line}"


def test_quickstart_defaults_are_the_shipped_recipe():
    from thinkless_lite.config import load_config

    values = parameter_values(read(QUICKSTART))
    cfg = load_config(values["CONFIG"])
    assert values["MODEL"] == "thinkless-lite/mini-base" == cfg.model.name_or_path
    assert values["WARMUP_STEPS"] == cfg.warmup.trl["max_steps"]
    assert values["WARMUP_EXAMPLES"] == cfg.warmup.data.num_examples
    assert values["RL_STEPS"] == cfg.rl.trl["max_steps"]
    assert values["RL_ALPHA"] == cfg.rl.alpha
    assert values["PER_LEVEL"] == cfg.eval.per_level
    assert values["SWEEP_TAU"] == cfg.eval.sweep_tau
    assert values["THREADS"] == cfg.threads


def test_t4_defaults_point_at_the_real_recipe():
    from thinkless_lite.config import load_config
    from thinkless_lite.data.benchmarks import BENCHMARKS
    from thinkless_lite.export.hub import is_hub_id

    values = parameter_values(read(T4))
    cfg = load_config(values["CONFIG"])
    assert values["MODEL"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" == cfg.model.name_or_path
    assert is_hub_id(values["PUBLIC_WARMUP_MODEL"]) and values["START_FROM_PUBLIC_WARMUP"] is False  # opt-in
    assert values["WARMUP_DATA"] == cfg.warmup.data.path
    assert values["RL_DATA"] == cfg.rl.data.source
    assert values["EVAL_BENCHMARKS"] and set(values["EVAL_BENCHMARKS"]) <= set(BENCHMARKS)
    assert values["PUSH_TO_HUB"] is False and values["OFFLINE"] is False


def test_overrides_from_parameters_survive_the_config_loader():
    from thinkless_lite.config import load_config
    from thinkless_lite.notebook import as_overrides

    cfg = load_config(REPO / "configs" / "mini.yaml", as_overrides({
        "eval.data_file": "../data dir/gsm8k: test.jsonl", "eval.sweep_tau": [0.5, 1], "model.adapter_path": None,
        "rl.alpha": 0.25, "threads": None, "rl.data.source": "agentica-org/DeepScaleR-Preview-Dataset",
        "eval.modes": ("auto", "short"), "miniworld.difficulty_weights": {1: 0.5, 8: 0.5},
        "rl.weight_decay": 0.0, "rl.optim": "adamw_torch"}))
    assert cfg.eval.data_file == "../data dir/gsm8k: test.jsonl"
    assert cfg.eval.sweep_tau == [0.5, 1] and cfg.rl.alpha == 0.25
    assert cfg.model.adapter_path is None and cfg.threads is None
    assert cfg.rl.data.source == "agentica-org/DeepScaleR-Preview-Dataset"
    assert cfg.eval.modes == ["auto", "short"]
    assert cfg.miniworld.difficulty_weights[8] == 0.5 and "8" not in cfg.miniworld.difficulty_weights
    assert (cfg.rl.trl["weight_decay"], cfg.rl.trl["optim"]) == (0.0, "adamw_torch")  # TRL's own GRPOConfig fields, passed on
    assert {k: cfg.rl.trl[k] for k in ("weight_decay", "optim")} == {"weight_decay": 0.0, "optim": "adamw_torch"}


def test_compare_adapters_sees_a_change_and_its_absence(tmp_path):
    import torch
    from safetensors.torch import save_file

    from thinkless_lite.notebook import compare_adapters

    a = {"x.lora_A.weight": torch.ones(2, 3), "x.lora_B.weight": torch.zeros(3, 2)}
    b = {"x.lora_A.weight": torch.ones(2, 3), "x.lora_B.weight": torch.full((3, 2), 0.5)}
    for name, tensors in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "adapter_model.safetensors"))
    assert compare_adapters(tmp_path / "a", tmp_path / "a")["changed"] == 0
    diff = compare_adapters(tmp_path / "a", tmp_path / "b")
    assert (diff["changed"], diff["tensors"], diff["max_abs_diff"]) == (1, 2, 0.5)
    assert diff["most_changed"] == ["x.lora_B.weight"]
    # None: a fresh adapter, whose lora_B is zero.
    assert compare_adapters(None, tmp_path / "a")["changed"] == 0
    assert compare_adapters(None, tmp_path / "b")["changed"] == 1
    with pytest.raises(FileNotFoundError):
        compare_adapters(tmp_path / "a", tmp_path / "missing")


def test_repo_root_is_found_from_the_notebooks_folder(tmp_path):
    from thinkless_lite.notebook import repo_root, show_image

    assert repo_root(NOTEBOOKS) == REPO
    with pytest.raises(FileNotFoundError):
        show_image(tmp_path / "missing.png")


# ---------------------------------------------------------------- end to end (slow)

@pytest.mark.slow
def test_quickstart_notebook_runs_headless(tmp_path, artifacts_dir, monkeypatch):
    out = tmp_path / "quickstart"
    nb, seconds = execute(
        QUICKSTART, artifacts_dir, monkeypatch,
        OUT=str(out), THREADS=1, WARMUP_STEPS=30, WARMUP_EXAMPLES=1000, RL_STEPS=3, PER_LEVEL=5,
        SWEEP_TAU=[0.5], LOOK_QUESTIONS=["3+4", "2+5*3", "7+3*2-5*9+1"])
    print(f"quickstart notebook: {seconds:.0f} s")

    assert "Not running in Colab: skipping the install" in cell_text(nb.cells[2])
    # Stage outputs on disk.
    for stage in ("warmup", "rl"):
        assert (out / stage / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "rl" / "curves.png").stat().st_size > 10_000
    report = json.loads((out / "eval" / "report.json").read_text())
    mini = report["benchmarks"]["miniworld"]
    for mode in ("auto", "think", "short"):
        assert mini[mode]["n"] == 5 * 8
        for key in ("accuracy", "think_ratio", "mean_tokens", "format_error_rate"):
            assert 0 <= mini[mode][key] <= (1 if key != "mean_tokens" else 1e4)
    assert {p["tau"] for p in report["tau_sweeps"]["miniworld"]} == {0.5, 0.0, None}
    assert (out / "eval" / "report.png").stat().st_size > 10_000

    # What the cells showed.
    after_warmup = cell_text(cell_containing(nb, "warmup.main(cfg)"))
    assert "### miniworld" in after_warmup and "| think | 40 |" in after_warmup
    assert images(cell_containing(nb, "rl.main(cfg)")) == 1, "the U-curve plot was not shown"
    evaluation = cell_containing(nb, "report = evaluate(eval_cfg)")
    assert "| auto | 40 |" in cell_text(evaluation) and images(evaluation) == 1
    assert "tokens saved by the model's own choice" in cell_text(evaluation)
    reward = cell_text(cell_containing(nb, "thinkless_reward(completion, gold)"))
    assert "short, right" in reward and "reward +1.0" in reward and "reward +0.5" in reward and "reward -1.0" in reward
    for snippet in ("before = generate(", "after = generate("):
        assert "7+3*2-5*9+1" in cell_text(cell_containing(nb, snippet))
    assert "adapter_model.safetensors" in cell_text(cell_containing(nb, "nb.list_files("))
    merged = out / "merged"  # the save cell exports a standalone model with its card
    assert (merged / "model.safetensors").is_file() and (merged / "chat_template.jinja").is_file()
    assert "### miniworld" in (card := (merged / "README.md").read_text()) and "| auto | 40 |" in card
    assert "adapter tensors changed during DeGRPO" in cell_text(cell_containing(nb, "nb.compare_adapters("))
    assert "Demo built but not launched (not in Colab" in cell_text(cell_containing(nb, "build_app("))


@pytest.mark.slow
def test_t4_notebook_runs_headless_on_the_mini_world(tmp_path, artifacts_dir, monkeypatch, benchmarks_dir):
    from thinkless_lite.data.hybrid import miniworld_responses
    from thinkless_lite.data.miniworld import MiniWorld
    from thinkless_lite.tokens import format_completion

    # A paired warm-up file in the layout of Vinnnf/Hybrid-OpenR1-Math-220k-formatted (instruction, output).
    paired = tmp_path / "paired.jsonl"
    with paired.open("w") as f:
        for r in miniworld_responses(MiniWorld(), 150):
            f.write(json.dumps({"instruction": r.question,
                                "output": format_completion(r.mode, r.answer, r.reasoning)}) + "\n")
    shared = os.path.relpath(benchmarks_dir, REPO)  # "../shared/data/benchmarks", read from the repo root
    # The run folder on "Google Drive": a stand-in google.colab.drive on the kernel's path mounts a tmp folder.
    fake = fake_colab_drive(tmp_path / "fake_colab")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(fake), os.environ.get("PYTHONPATH")])))
    drive = tmp_path / "drive"
    out = drive / "MyDrive" / "thinkless-lite" / "runs" / "t4-test"
    parameters = dict(
        CONFIG="mini", MODEL="thinkless-lite/mini-base", OUT="runs/t4-test", USE_DRIVE=True,
        DRIVE_MOUNT=str(drive), THREADS=1,
        MAX_SEQ_LENGTH=512, WARMUP_DATA=str(paired), WARMUP_EXAMPLES=200, WARMUP_STEPS=5,
        WARMUP_MAX_COMPLETION_TOKENS=None, WARMUP_BATCH_SIZE=8, WARMUP_GRAD_ACCUM=1,
        RL_DATA=f"{shared}/deepscaler_train/math.json", RL_HUB_CONFIG=None, RL_QUESTION_COLUMN="problem",
        RL_GOLD_FORMAT="plain", RL_EXAMPLES=64, RL_STEPS=2, RL_NUM_GENERATIONS=4,
        RL_PROMPTS_PER_STEP=4, RL_GRAD_ACCUM=1, RL_MAX_COMPLETION=24,
        EVAL_BENCHMARKS=["gsm8k", "math500"],
        EVAL_DATA_FILES={"gsm8k": f"{shared}/gsm8k/test.jsonl", "math500": f"{shared}/math500/test.jsonl"},
        EVAL_LIMIT=4, EVAL_MAX_NEW_TOKENS=24, EVAL_BATCH_SIZE=4, SWEEP_TAU=[0.5],
        LOOK_QUESTIONS=["3+4", "7+3*2-5"], LOOK_MAX_NEW_TOKENS=48,
        OFFLINE=True, PUSH_TO_HUB=True, HUB_REPO="someone/thinkless-test",
        LAUNCH_DEMO=True, DEMO_SHARE=False, DEMO_MAX_NEW_TOKENS=48)
    port = free_port()
    nb, seconds = execute(T4, artifacts_dir, monkeypatch, may_fail=("nb.compare_adapters(",), DEMO_PORT=port,
                          **parameters)
    print(f"T4 notebook on the mini-world: {seconds:.0f} s")
    install = cell_text(nb.cells[2])
    assert f"run folder: {out}" in install and "Mounted at" in install and "warmup: starts" in install, install
    # After its first 3 steps the warm-up says how long it and the whole pipeline still need.
    assert "min for the whole pipeline" in cell_text(cell_containing(nb, "warmup.main(cfg)"))

    assert "Not running in Colab: skipping the install" in cell_text(nb.cells[2])
    setup = cell_text(cell_containing(nb, "nb.gpu_report()"))
    assert "hub access: offline" in setup and "no CUDA GPU" in setup
    for stage in ("warmup", "rl"):
        assert (out / stage / "adapter" / "adapter_model.safetensors").is_file()
    assert "question_column: problem" in (out / "rl" / "resolved.yaml").read_text()
    assert images(cell_containing(nb, "rl.main(cfg)")) == 1
    for name, source in (("gsm8k", "gsm8k/test.jsonl"), ("math500", "math500/test.jsonl")):
        report = json.loads((out / "eval" / name / "report.json").read_text())
        assert report["num_items"] == {name: 4}
        assert set(report["benchmarks"][name]) == {"auto", "think", "short"}
        assert {p["tau"] for p in report["tau_sweeps"][name]} == {0.5, 0.0, None}
        assert (out / "eval" / name / "report.png").stat().st_size > 10_000
        assert source in (out / "eval" / name / "resolved.yaml").read_text()
    evaluation = cell_containing(nb, "reports[name] = evaluate(")
    assert images(evaluation) == 2 and "gsm8k" in cell_text(evaluation) and "math500" in cell_text(evaluation)
    push = cell_text(cell_containing(nb, "push_to_hub="))
    assert "Offline (HF_HUB_OFFLINE=1): skipping the push to someone/thinkless-test" in push
    card = (out / "export" / "README.md").read_text()  # exported locally all the same, with its card
    assert (out / "export" / "adapter_model.safetensors").is_file()
    assert "### gsm8k" in card and "### math500" in card and card.count("| auto | 4 |") == 2
    # The mini-world model never starts a MATH answer with a control token, so every sampled answer is a
    # format error, every group ties and is dropped, and DeGRPO cannot update anything: the check must
    # then fail, saying so (the quickstart test covers the passing side).
    verify = cell_containing(nb, "nb.compare_adapters(")
    assert "adapter tensors changed during DeGRPO" in cell_text(verify)
    errors = [o for o in verify.outputs if o.output_type == "error"]
    if errors:
        assert errors[0].ename == "AssertionError" and "unchanged" in errors[0].evalue, errors[0].evalue
        assert "'groups_all_wrong': 1.0" in cell_text(cell_containing(nb, "rl.main(cfg)"))
    demo = cell_text(cell_containing(nb, "build_app("))
    assert f"127.0.0.1:{port}" in demo, demo

    # A disconnect: a fresh kernel runs the notebook again on the same Drive folder, and every stage resumes.
    (drive / "MyDrive").unlink()  # a new VM: Drive is not mounted yet (its content stays on "Drive")
    again, _ = execute(T4, artifacts_dir, monkeypatch, may_fail=("nb.compare_adapters(",), DEMO_PORT=free_port(),
                       **parameters)
    install = cell_text(again.cells[2])
    assert "warmup: resumes from checkpoint-5" in install and "rl: resumes from checkpoint-2" in install, install
    assert "resuming warm-up from" in cell_text(cell_containing(again, "warmup.main(cfg)"))
    assert "resuming RL from" in cell_text(cell_containing(again, "rl.main(cfg)"))
