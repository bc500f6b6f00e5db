"""The stages' one set-up (thinkless_lite.stages.setup): threads, the backend before TRL, the folder, no files."""

from __future__ import annotations

import pytest
import torch

from thinkless_lite.config import load_config
from thinkless_lite.stages import setup


@pytest.fixture
def thread_counts(monkeypatch):
    """The counts passed to torch.set_num_threads, which is not called for real (the tests' own count stays)."""
    counts = []
    monkeypatch.setattr(torch, "set_num_threads", counts.append)
    return counts


def test_prepare_stage_sets_threads_and_backend_and_writes_nothing(tmp_path, thread_counts, monkeypatch):
    chosen = []
    monkeypatch.setattr(setup, "select_backend", chosen.append)
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=run", "threads=3", "model.backend=hf"])
    assert setup.prepare_stage(cfg, "warmup") == tmp_path / "run" / "warmup"
    assert thread_counts == [3] and chosen == ["hf"]
    assert setup.prepare_stage(cfg, backend=False) == tmp_path / "run"  # the quickstart's folder: the run itself
    assert thread_counts == [3, 3] and chosen == ["hf"]
    assert list(tmp_path.iterdir()) == []  # a stage creates its folder and resolved.yaml once its inputs are checked


def test_no_thread_count_keeps_torch_default(tmp_path, thread_counts):
    setup.prepare_stage(load_config(None, [f"output_dir={tmp_path}", "threads=null"]), backend=False)
    assert thread_counts == []
