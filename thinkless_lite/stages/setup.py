"""The set-up every stage starts with, written once: the files the config names, torch threads, then the model
backend, then the stage folder.

Seeds are not set here: each stage seeds where it loads its model (``load_model(seed=cfg.seed)``) and TRL
seeds its own trainer, after the data is built. ``resolved.yaml`` is not written here either: a stage
writes it once its inputs are checked, so a start that fails on bad input leaves the run as it was.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from thinkless_lite.config import RunConfig, check_sources
from thinkless_lite.model import select_backend


def prepare_stage(cfg: RunConfig, name: str = "", *, backend: bool = True) -> Path:
    """Set up a stage and return its folder, ``<run>/<name>`` (the run folder itself without a name).

    ``backend``: choose the model backend now, which imports Unsloth (when it will be used) before the
    stage imports TRL; the training stages and the quickstart need that, evaluation leaves it to ``load_model``.
    The folder is not created: a stage creates it once its inputs are checked.
    """
    check_sources(cfg.model)
    if cfg.threads:  # None keeps torch's default, all cores
        torch.set_num_threads(cfg.threads)
    if backend:
        select_backend(cfg.model.backend)
    return cfg.run_dir / name


@contextlib.contextmanager
def new_folder(path: Path):
    """Create ``path`` (and its missing parents) for a stage's start; if the block fails, remove the folders this
    created that are still empty, so a start refused on bad input leaves no folder behind. Anything written into
    them (a teacher file that took an hour) stays."""
    created = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in created:  # deepest first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
