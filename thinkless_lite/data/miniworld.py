"""The mini-world: procedurally generated arithmetic with a difficulty knob k, and its two exact teachers.

Two task families (``MiniWorld.task``):

* ``chain`` (default, the shipped tiny base's world): chained single-digit operations mod 10;
* ``addition``: "What is 47 + 85?" with two k-digit numbers, for real pretrained models, which answer
  one-digit sums directly but need the column method, place by place, for long ones.

The ``chain`` task:

``7+3*2-5`` is read left to right mod 10: (7+3)=0, 0*2=0, 0-5=5. Difficulty is the number of
operations k. A step-by-step solution needs one easy step per operation, so a small model solves
every k reliably; a direct answer must compose k steps in one forward pass, which a tiny model can
only do for k=1. That is exactly the regime Thinkless is about: think only when it pays.

Two teachers, both exact: the long-form solver writes an R1-style chain (restates the task, one
line per step, a closing sentence: the verbosity is deliberate, reasoning models overthink easy
questions), the short-form solver restates the task with its result and no steps (``7+3*2-5=5``).

Splits are decided by a hash of the expression, so train and test never overlap whatever the seed,
and every item is a pure function of (seed, split, index).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import fields
from typing import Sequence

from thinkless_lite.data.items import MathItem
from thinkless_lite.settings import MiniWorldConfig

OPERATORS = ("+", "-", "*")
SPLITS = ("train", "test")

def apply(op: str, left: int, right: int) -> int:
    if op == "+":
        return (left + right) % 10
    if op == "-":
        return (left - right) % 10
    if op == "*":
        return (left * right) % 10
    raise ValueError(f"unknown operator {op!r}; expected one of {OPERATORS}")


def solve_steps(expression: str) -> list[tuple[int, str, int, int]]:
    """Evaluate left to right; returns (left, op, right, result) per operation."""
    text = expression.replace(" ", "")
    if len(text) < 3 or len(text) % 2 == 0:
        raise ValueError(f"not a mini-world expression: {expression!r} (expected e.g. '7+3*2')")
    value = int(text[0])
    steps = []
    for i in range(1, len(text), 2):
        op, right = text[i], int(text[i + 1])
        result = apply(op, value, right)
        steps.append((value, op, right, result))
        value = result
    return steps


def solve(expression: str) -> int:
    steps = solve_steps(expression)
    return steps[-1][3]


def long_solution(expression: str) -> tuple[str, str]:
    """The reasoning teacher: (reasoning, answer). Reasoning goes between <think> and </think>."""
    steps = solve_steps(expression)
    lines = "".join(f"{a}{op}{b}={r}\n" for a, op, b, r in steps)
    answer = str(steps[-1][3])
    return f"Let me solve {expression} step by step.\n{lines}So the answer is {answer}.\n", answer


def short_solution(expression: str) -> str:
    """The instruction teacher: the task restated with its result, ``7+3*2-5=5``, no steps.

    Restating is how instruction models answer, and it keeps the direct answer learnable by LoRA on
    any seed of the base: at k=1 it is the copy-then-compute step the base does in every reasoning
    line, while k >= 2 still has to compose k operations in one forward pass.
    """
    return f"{expression}={solve(expression)}"


# ---------------------------------------------------------------- the addition task

def addition_operands(question: str) -> tuple[int, int]:
    """``"What is 47 + 85?"`` -> (47, 85)."""
    text = question.removeprefix("What is ").removesuffix("?")
    left, sep, right = text.partition(" + ")
    if not sep or not left.isdigit() or not right.isdigit():
        raise ValueError(f"not an addition question: {question!r} (expected e.g. 'What is 47 + 85?')")
    return int(left), int(right)


PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands")


def place_name(i: int) -> str:
    return PLACES[i] if i < len(PLACES) else f"10^{i}s"


def addition_long_solution(question: str) -> tuple[str, str]:
    """The reasoning teacher for additions: the column method. Each number is first spelled out by place
    ("383 = 3 hundreds + 8 tens + 3 ones"), so every later step looks its digits up by name instead of
    counting positions from the right, and every step adds the carry, 0 included, so none is forgotten:
    the two places SmolLM2-135M's chains went wrong."""
    a, b = addition_operands(question)
    digits_a, digits_b = str(a)[::-1], str(b)[::-1]
    lines = [f"{n} = " + " + ".join(f"{d} {place_name(i)}" for i, d in reversed(list(enumerate(digits))))
             for n, digits in ((a, digits_a), (b, digits_b))]
    carry, width = 0, max(len(digits_a), len(digits_b))
    for i in range(width):
        x = int(digits_a[i]) if i < len(digits_a) else 0
        y = int(digits_b[i]) if i < len(digits_b) else 0
        total = x + y + carry
        lines.append(f"{place_name(i)}: {x}+{y}+{carry} = {total}, write {total % 10}, carry {total // 10}")
        carry = total // 10
    if carry:
        lines.append(f"{place_name(width)}: write the carry {carry}")
    lines.append(f"So the answer is {a + b}.")
    return "\n".join(lines) + "\n", str(a + b)


def addition_short_solution(question: str) -> str:
    """The instruction teacher for additions: the sum restated with its result, ``47 + 85 = 132``."""
    a, b = addition_operands(question)
    return f"{a} + {b} = {a + b}"


def split_of(expression: str, test_fraction: float) -> str:
    """Hash-based split: an expression lands in one split forever, independent of any seed."""
    digest = hashlib.sha256(expression.encode()).digest()
    return "test" if int.from_bytes(digest[:4], "big") / 2**32 < test_fraction else "train"


class MiniWorld(MiniWorldConfig):
    """The task generator and its two exact teachers: the settings of a recipe's ``miniworld`` section
    (``MiniWorld.of(cfg.miniworld)``) or given directly (``MiniWorld(task="addition")``)."""

    @classmethod
    def of(cls, settings: MiniWorldConfig) -> MiniWorld:
        """The generator for ``settings`` (itself when it already is one)."""
        if isinstance(settings, cls):
            return settings
        return cls(**{f.name: getattr(settings, f.name) for f in fields(settings)})

    def _draw_expression(self, rng: random.Random, k: int) -> str:
        if self.task == "addition":
            low = 10 ** (k - 1) if k > 1 else 0
            return f"What is {rng.randrange(low, 10 ** k)} + {rng.randrange(low, 10 ** k)}?"
        parts = [str(rng.randrange(10))]
        for _ in range(k):
            parts += [rng.choice(OPERATORS), str(rng.randrange(10))]
        return "".join(parts)

    def solve(self, question: str) -> int:
        return sum(addition_operands(question)) if self.task == "addition" else solve(question)

    def long_solution(self, question: str) -> tuple[str, str]:
        """(reasoning, answer) of the reasoning teacher; the reasoning goes between <think> and </think>."""
        return addition_long_solution(question) if self.task == "addition" else long_solution(question)

    def short_solution(self, question: str) -> str:
        return addition_short_solution(question) if self.task == "addition" else short_solution(question)

    def sample(self, split: str, n: int, *, difficulties: Sequence[int] | None = None,
               seed_offset: int = 0) -> list[MathItem]:
        """``n`` items of ``split``; difficulties drawn from the mix, or cycled over ``difficulties``.

        Deterministic in (seed, split, seed_offset). k=1 has only 300 distinct expressions, so
        small levels repeat items within a split; the splits themselves never share one.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rng = random.Random(f"{self.seed}:{split}:{seed_offset}")
        levels = self.levels
        weights = [self.difficulty_weights[k] for k in levels]
        items = []
        for i in range(n):
            k = difficulties[i % len(difficulties)] if difficulties else rng.choices(levels, weights)[0]
            while True:
                expression = self._draw_expression(rng, k)
                if split_of(expression, self.test_fraction) == split:
                    break
            items.append(MathItem(question=expression, gold=str(self.solve(expression)),
                                  id=f"mini-{split}-{seed_offset}-{i}", difficulty=k, source="miniworld"))
        return items

    def teacher_rows(self, items: Sequence[MathItem]) -> list[dict]:
        """Rows for the hybrid warm-up builder: question, gold, long and short responses."""
        rows = []
        for item in items:
            reasoning, answer = self.long_solution(item.question)
            rows.append({"question": item.question, "answer": item.gold, "difficulty": item.difficulty,
                         "long_reasoning": reasoning, "long_answer": answer,
                         "short_answer": self.short_solution(item.question)})
        return rows


def benchmark_items(limit: int | None = None, *, per_level: int = 50,
                    world: MiniWorldConfig | None = None) -> list[MathItem]:
    """The held-out evaluation set: ``per_level`` distinct test questions at every difficulty level.

    Distinct, because easy levels are small (k=1 of the chain task has about 60 test expressions): drawn
    with replacement, one fact the model gets wrong would count two or three times. A level with fewer
    test questions than ``per_level`` contributes all it has. Items cycle over levels, so any ``limit``
    still spans them.
    """
    world = MiniWorld.of(world or MiniWorldConfig())
    by_level = []
    for k in world.levels:
        rng = random.Random(f"{world.seed}:test:benchmark:{k}")
        seen: dict[str, None] = {}
        for _ in range(200 * per_level):  # enough draws to exhaust a small level
            if len(seen) == per_level:
                break
            expression = world._draw_expression(rng, k)
            if split_of(expression, world.test_fraction) == "test":
                seen.setdefault(expression)
        by_level.append([MathItem(question=q, gold=str(world.solve(q)), id=f"mini-test-k{k}-{i}", difficulty=k,
                                  source="miniworld") for i, q in enumerate(seen)])
    items = [level[i] for i in range(max(map(len, by_level), default=0)) for level in by_level if i < len(level)]
    return items[:limit] if limit else items
