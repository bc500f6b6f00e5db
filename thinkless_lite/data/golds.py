"""Gold answers as the sources write them -> the bare answer the grader compares against.

One small pure function per quirk (see ``shared/data/benchmarks/README.md``): GSM8K's ``#### N`` with
thousands commas, AIME's leading zeros, AMC's floats, MATH's last ``\\boxed{}``; plus the difficulty
readers (``"Level 3"``). The benchmarks registry, the RL data (``rl.data.gold_format``) and the file
reader all take their normalisers from here.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from thinkless_lite.grading import last_boxed

GoldNormalizer = Callable[[Any], "str | None"]

_NUMBER_WITH_COMMAS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_LEVEL_RE = re.compile(r"^\s*(?:level\s*)?([+-]?\d+(?:\.0*)?)\s*$", re.IGNORECASE)


def default_gold(value: Any) -> str | None:
    """Gold as text: strings stripped, integral floats as integers (``142.0`` -> ``"142"``)."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value).strip()


def gsm8k_gold(answer: Any) -> str | None:
    """The number after the last ``####`` of a GSM8K answer, thousands separators removed
    (``"...\\n#### 1,600"`` -> ``"1600"``); ``None`` if there is no ``####``."""
    if answer is None or "####" not in str(answer):
        return None
    gold = str(answer).rsplit("####", 1)[1].strip()
    if _NUMBER_WITH_COMMAS.fullmatch(gold):
        gold = gold.replace(",", "")
    return gold or None


def strip_leading_zeros(value: Any) -> str | None:
    """An integer string without leading zeros (``"025"`` -> ``"25"``, ``"000"`` -> ``"0"``);
    other text is returned stripped, unchanged."""
    if value is None:
        return None
    text = str(value).strip()
    m = re.fullmatch(r"([+-]?)0*(\d+)", text)
    if not m:
        return text
    digits = m.group(2)
    return ("-" if m.group(1) == "-" and digits != "0" else "") + digits


def float_to_int_string(value: Any) -> str | None:
    """A float that is an integer as an integer string (``142.0`` / ``"142.0"`` -> ``"142"``);
    other values as text (``2.5`` -> ``"2.5"``); ``None``/NaN -> ``None``."""
    if isinstance(value, bool):
        return str(value)
    if value is None or isinstance(value, (int, float)):
        return default_gold(value)
    text = str(value).strip()
    if re.fullmatch(r"[+-]?\d+\.0*", text):
        return strip_leading_zeros(text.split(".")[0])
    return text


GOLD_FORMATS: dict[str, GoldNormalizer] = {"plain": default_gold, "gsm8k": gsm8k_gold, "boxed": last_boxed}


def parse_difficulty(value: Any) -> int | None:
    """An integer difficulty from ``3``, ``3.0``, ``"3"`` or ``"Level 3"``; ``None`` otherwise
    (``"Level ?"``, ``4.625``, missing)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    m = _LEVEL_RE.match(str(value))
    return int(float(m.group(1))) if m else None


def math_level(value: Any) -> int | None:
    """MATH difficulty level 1-5 from ``3``, ``3.0`` or ``"Level 3"``; ``None`` for anything
    else (``"Level ?"``, and ``0.0``, which is how DeepScaleR's copy writes ``"Level ?"``)."""
    level = parse_difficulty(value)
    return level if level is not None and 1 <= level <= 5 else None
