"""thinkless_lite: teach a reasoning LLM when to think, with QLoRA on one consumer GPU.

Public API (imported lazily so ``import thinkless_lite`` stays fast and torch-free until needed)::

    from thinkless_lite import load_config, load_model, generate, stream
    from thinkless_lite import grade_answer, thinkless_reward, degrpo_loss
"""

from __future__ import annotations

import importlib
import logging

__version__ = "0.1.0"


class _OptionalKernelNotice(logging.Filter):
    """bitsandbytes, on AVX512-BF16 CPUs, warns at import that the optional ``kernels`` package (a faster CPU
    kernel fetched from the hub) is missing. Nothing is wrong and nothing can be done offline: its own
    built-in kernel runs instead. The warning greeted every command; it is kept at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "kernels-community" not in record.getMessage():
            return True
        logging.getLogger("thinkless_lite").debug("bitsandbytes: optional `kernels` CPU kernel unavailable; "
                                                  "using its built-in AVX512-BF16 kernel (%s)", record.getMessage())
        return False


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_OptionalKernelNotice())

_EXPORTS = {
    "load_config": "thinkless_lite.config",
    "RunConfig": "thinkless_lite.config",
    "ControlTokens": "thinkless_lite.tokens",
    "format_prompt": "thinkless_lite.tokens",
    "parse_completion": "thinkless_lite.tokens",
    "load_model": "thinkless_lite.model",
    "save_adapter": "thinkless_lite.model",
    "generate": "thinkless_lite.generation",
    "stream": "thinkless_lite.generation",
    "SamplingSettings": "thinkless_lite.generation",
    "grade_answer": "thinkless_lite.grading",
    "extract_answer": "thinkless_lite.grading",
    "thinkless_reward": "thinkless_lite.rewards",
    "score_completion": "thinkless_lite.rewards",
    "RewardTable": "thinkless_lite.rewards",
    "ThinklessReward": "thinkless_lite.rewards",
    "Routing": "thinkless_lite.tokens",
    "degrpo_loss": "thinkless_lite.losses",
    "group_advantages": "thinkless_lite.losses",
    "DeGRPOTrainer": "thinkless_lite.trainers",
    "MiniWorld": "thinkless_lite.data.miniworld",
    "load_benchmark": "thinkless_lite.data.benchmarks",
    "evaluate": "thinkless_lite.stages.evaluate",
    "evaluate_items": "thinkless_lite.records",
    "summarize": "thinkless_lite.summaries",
    "tau_sweep": "thinkless_lite.records",
    "ThinklessEngine": "thinkless_lite.demo_engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'thinkless_lite' has no attribute {name!r}")
