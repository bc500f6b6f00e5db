"""Names every part of the GPU check shares; nothing here imports torch or the package."""

from __future__ import annotations

import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "r1_distill_1.5b_t4.yaml"
# hf: transformers + bitsandbytes NF4 + PEFT. unsloth: Unsloth imported before TRL and transformers, as the
# thinkless-lite CLI does, so DeGRPOTrainer derives from Unsloth's rewritten GRPOTrainer. (Unsloth imported
# after thinkless_lite.trainers is no configuration any more: DeGRPOTrainer refuses it at construction.)
BACKENDS = ("hf", "unsloth")
GB = 1e9
NOT_MEASURED = "Not measured yet: no GPU in the session that built it."


def split_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def canonical_name(name: str) -> str:
    """A parameter name without PEFT's wrapper prefixes, so both backends' names match."""
    while name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return name


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
