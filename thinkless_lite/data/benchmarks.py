"""Math benchmarks by name: where they live on the hub, their offline copies, and their golds.

``load_benchmark("gsm8k")`` loads GSM8K test from the hub (``openai/gsm8k``); with
``data_file=...`` it reads a local copy instead, and ``offline=True`` reads the copy in the
shared offline folder (``../shared/data/benchmarks`` beside the repository, or
``$THINKLESS_BENCHMARKS_DIR``). Each benchmark's gold answer is normalised by its function from
:mod:`thinkless_lite.data.golds`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from thinkless_lite.data.files import (ColumnMap, DataSourceError, HubUnreachableError, SkipReport, column_names,
                                       load_rows, read_rows, rows_to_items)
from thinkless_lite.data.golds import (GoldNormalizer, default_gold, float_to_int_string, gsm8k_gold, math_level,
                                       parse_difficulty, strip_leading_zeros)
from thinkless_lite.data.items import MathItem
from thinkless_lite.grading import last_boxed

if TYPE_CHECKING:
    from thinkless_lite.config import RunConfig

logger = logging.getLogger(__name__)

BENCHMARKS_DIR_ENV = "THINKLESS_BENCHMARKS_DIR"
MINIWORLD = "miniworld"


class UnknownBenchmarkError(DataSourceError):
    """A benchmark name that is not in :data:`BENCHMARKS`."""


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives and how to read its question and gold answer.

    ``columns`` and ``gold`` describe the hub rows; ``id``/``difficulty`` columns absent from a
    given copy are ignored. ``preferred_answer`` names a column that, where present and
    non-empty, already holds the gold (used as is, stripped) instead of ``gold(columns.answer)``.
    ``local_file`` is relative to the offline benchmarks folder.
    """

    name: str
    hub_id: str
    hub_config: str | None
    split: str
    columns: ColumnMap
    gold: GoldNormalizer
    local_file: str
    description: str
    preferred_answer: str | None = None
    difficulty: Callable[[Any], int | None] = parse_difficulty


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec(
            name="gsm8k",
            hub_id="openai/gsm8k",
            hub_config="main",
            split="test",
            columns=ColumnMap(question="question", answer="answer"),
            gold=gsm8k_gold,
            local_file="gsm8k/test.jsonl",
            description="GSM8K test: 1319 grade-school word problems; gold = number after ####.",
        ),
        BenchmarkSpec(
            name="math500",
            hub_id="HuggingFaceH4/MATH-500",
            hub_config=None,
            split="test",
            columns=ColumnMap(question="problem", answer="answer", id="unique_id", difficulty="level"),
            gold=default_gold,
            local_file="math500/test.jsonl",
            description="MATH-500: the PRM800K 500-problem test split of MATH, levels 1-5.",
            difficulty=math_level,
        ),
        BenchmarkSpec(
            name="minerva_algebra",
            hub_id="EleutherAI/hendrycks_math",
            hub_config="algebra",
            split="test",
            columns=ColumnMap(question="problem", answer="solution", id="math_test_idx", difficulty="level"),
            gold=last_boxed,
            local_file="minerva_algebra/test.jsonl",
            description="MATH test, Algebra (1187): gold = last \\boxed{} of the solution.",
            preferred_answer="boxed_answer",
            difficulty=math_level,
        ),
        BenchmarkSpec(
            name="aime2024",
            hub_id="HuggingFaceH4/aime_2024",
            hub_config=None,
            split="train",
            columns=ColumnMap(question="problem", answer="answer", id="id"),
            gold=strip_leading_zeros,
            local_file="aime2024/test.jsonl",
            description="AIME 2024 I and II (30); gold = integer 0-999 without leading zeros.",
        ),
        BenchmarkSpec(
            name="amc",
            hub_id="AI-MO/aimo-validation-amc",
            hub_config=None,
            split="train",
            columns=ColumnMap(question="problem", answer="answer"),
            gold=float_to_int_string,
            local_file="amc/amc.json",
            description="AMC 12 2022-23 (83); gold floats like 142.0 become '142'.",
        ),
        BenchmarkSpec(
            name="math_train",
            hub_id="agentica-org/DeepScaleR-Preview-Dataset",
            hub_config=None,
            split="train",
            columns=ColumnMap(question="problem", answer="answer", difficulty="difficulty"),
            gold=default_gold,
            local_file="deepscaler_train/math.json",
            description="RL training questions (problem/answer); offline copy = MATH train (7474).",
            difficulty=math_level,
        ),
    )
}


def benchmark_names() -> list[str]:
    """Every name :func:`load_benchmark` accepts (the registry plus ``"miniworld"``)."""
    return sorted([*BENCHMARKS, MINIWORLD])


def _canonical(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def get_spec(name: str) -> BenchmarkSpec:
    """The :class:`BenchmarkSpec` for ``name``; :class:`UnknownBenchmarkError` lists the names."""
    key = _canonical(name)
    if key not in BENCHMARKS:
        raise UnknownBenchmarkError(
            f"unknown benchmark {name!r}; known benchmarks: {', '.join(benchmark_names())}."
        )
    return BENCHMARKS[key]


def default_benchmarks_dir() -> Path:
    """``$THINKLESS_BENCHMARKS_DIR`` if set, else ``shared/data/benchmarks`` beside the repo."""
    env = os.environ.get(BENCHMARKS_DIR_ENV)
    if env:
        return Path(os.path.expanduser(env))
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "benchmarks"


def offline_path(name: str) -> Path | None:
    """The benchmark's file in the offline folder (see :func:`default_benchmarks_dir`), or
    ``None`` if it is not there (or the benchmark has no offline file, like ``miniworld``)."""
    if _canonical(name) == MINIWORLD:
        return None
    path = default_benchmarks_dir() / get_spec(name).local_file
    return path if path.is_file() else None


def _env_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("HF_DATASETS_OFFLINE", ""))
    return any(f.strip().lower() in {"1", "true", "yes", "on"} for f in flags)


def _fit_columns(columns: ColumnMap, rows) -> ColumnMap:
    """Drop the optional id/difficulty columns that this copy of the data does not have."""
    available = set(column_names(rows))
    if columns.id is not None and columns.id not in available:
        columns = replace(columns, id=None)
    if columns.difficulty is not None and columns.difficulty not in available:
        columns = replace(columns, difficulty=None)
    return columns


def _gold_from_row(spec: BenchmarkSpec, rows) -> Callable[[dict], str | None] | None:
    """With ``spec.preferred_answer`` in the rows: that cell as the gold, ``spec.gold(answer)`` where it is blank."""
    pref = spec.preferred_answer
    if not pref or pref not in column_names(rows):
        return None

    def gold(row: dict) -> str | None:
        value = row.get(pref)
        blank = value is None or (isinstance(value, str) and not value.strip())
        return spec.gold(row.get(spec.columns.answer)) if blank else default_gold(value)

    return gold


def _read_spec_rows(spec: BenchmarkSpec, data_file: Any, offline: bool | None):
    if data_file is not None:
        return read_rows(data_file), str(data_file)
    local = offline_path(spec.name)
    if offline is True or (offline is None and _env_offline() and local is not None):
        if local is None:
            raise DataSourceError(
                f"no offline copy of benchmark {spec.name!r}: looked for "
                f"{default_benchmarks_dir() / spec.local_file}. Set ${BENCHMARKS_DIR_ENV} to the "
                f"folder holding {spec.local_file}, or pass data_file / --data-file."
            )
        return read_rows(local), str(local)
    try:
        rows = load_rows(spec.hub_id, split=spec.split, config=spec.hub_config)
    except HubUnreachableError:
        if offline is None and local is not None:
            logger.warning("%s: hub unreachable; using the offline copy %s", spec.name, local)
            return read_rows(local), str(local)
        raise
    where = f"hub {spec.hub_id}" + (f" [{spec.hub_config}]" if spec.hub_config else "") + f" split {spec.split}"
    return rows, where


def miniworld_items(cfg: RunConfig | None = None, *, limit: int | None = None) -> list[MathItem]:
    """The mini-world's held-out evaluation set, defined here only, so every path evaluates the same questions.

    With a recipe: its world (``cfg.miniworld``) and ``cfg.eval.per_level``, as the evaluation stage uses.
    Without one (``load_benchmark("miniworld")``): the default ``MiniWorld()`` at 50 questions per level.
    ``limit`` keeps the first items, which still span every level.
    """
    from thinkless_lite.data.miniworld import benchmark_items  # lazy: written separately

    if cfg is None:
        return benchmark_items(limit=limit, per_level=50)
    return benchmark_items(limit=limit, per_level=cfg.eval.per_level, world=cfg.miniworld)


def load_benchmark_with_report(
    name: str,
    *,
    data_file: str | os.PathLike | None = None,
    limit: int | None = None,
    offline: bool | None = None,
) -> tuple[list[MathItem], SkipReport]:
    """Like :func:`load_benchmark`, also returning the :class:`SkipReport`."""
    if _canonical(name) == MINIWORLD:
        items = miniworld_items(limit=limit)
        return items, SkipReport(source=MINIWORLD, total=len(items), kept=len(items))
    spec = get_spec(name)
    rows, origin = _read_spec_rows(spec, data_file, offline)
    return rows_to_items(rows, _fit_columns(spec.columns, rows), source_name=spec.name, gold_normalizer=spec.gold,
                         gold_from_row=_gold_from_row(spec, rows), limit=limit, difficulty_parser=spec.difficulty,
                         origin=origin)


def load_benchmark(
    name: str,
    *,
    data_file: str | os.PathLike | None = None,
    limit: int | None = None,
    offline: bool | None = None,
) -> list[MathItem]:
    """Load a benchmark by name as :class:`MathItem` rows.

    ``data_file``: read that local file with the benchmark's columns and gold normaliser.
    Otherwise ``offline=True`` reads the offline copy (:func:`offline_path`), ``offline=False``
    the hub only, and ``offline=None`` (default) the hub -- or the offline copy when
    ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` is set or the hub is unreachable. ``limit`` keeps
    the first ``limit`` items. ``"miniworld"`` comes from ``thinkless_lite.data.miniworld``.
    """
    return load_benchmark_with_report(name, data_file=data_file, limit=limit, offline=offline)[0]
