"""The one row type every data source produces: a question with its gold answer."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MathItem:
    """A question and its gold final answer (normalised text, e.g. ``"1600"`` or ``"\\frac{1}{2}"``).

    ``difficulty`` is whatever the source calls difficulty (mini-world: number of operations;
    MATH: level 1-5); ``source`` names the benchmark or file it came from.
    """

    question: str
    gold: str
    id: str = ""
    difficulty: int | None = None
    source: str = ""
    meta: dict = field(default_factory=dict, compare=False)
