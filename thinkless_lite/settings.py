"""Settings that a recipe section shares with the layer that consumes it: the reward table (``rl.reward``,
read by ``rewards``) and the mini-world's (``miniworld``, read by ``data.miniworld``).

They live here, with no package imports, so that ``config`` types its sections without importing grading
or the data layer: config is the bottom of the house, and the modules that act on these settings import
them from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TASKS = ("chain", "addition")
# Default mix leans easy, like GSM8K for a reasoning model (the paper thinks on 13% of GSM8K).
# Token arithmetic: forced think costs 53 + 8k tokens, a direct answer 2k + 5 (7 at k=1), and only k=1
# is reliably answerable directly; with 70% of items at k=1 a perfectly routed model needs ~46% of
# forced-think tokens, at 60% it would need ~55%.
DEFAULT_DIFFICULTY_WEIGHTS = {1: 0.7, 2: 0.05, 3: 0.05, 4: 0.04, 5: 0.04, 6: 0.04, 7: 0.04, 8: 0.04}


@dataclass(frozen=True)
class RewardTable:
    """Reward per outcome; the defaults are the paper's released values."""

    short_correct: float = 1.0
    think_correct: float = 0.5
    short_wrong: float = -1.0
    think_wrong: float = -1.0
    format_error: float = -1.0


@dataclass(frozen=True)
class MiniWorldConfig:
    """The recipe's ``miniworld`` section: which task family, its difficulty mix and split. The generator
    that draws questions from it is ``data.miniworld.MiniWorld`` (``MiniWorld.of(cfg.miniworld)``)."""

    task: str = field(default="chain", metadata={"help": "chain (single-digit operations mod 10, the shipped base's "
                                                         "world) | addition (two k-digit numbers, for real pretrained models)."})
    difficulty_weights: dict = field(default_factory=lambda: dict(DEFAULT_DIFFICULTY_WEIGHTS), metadata={
        "help": "Difficulty k -> sampling weight. The default leans easy, like GSM8K."})
    test_fraction: float = field(default=0.2, metadata={"help": "Share of questions (by hash) held out for testing."})
    seed: int = field(default=0, metadata={"help": "Seed of the task sampler."})

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not self.difficulty_weights:
            raise ValueError("difficulty_weights is empty; give e.g. {1: 0.5, 4: 0.5}")
        weights = {}
        for k, w in self.difficulty_weights.items():
            try:
                level, weight = int(k), float(w)
            except (TypeError, ValueError):
                level, weight = 0, -1.0
            if level < 1 or weight < 0:
                raise ValueError(f"difficulty_weights has a bad entry {k}: {w} (levels are integers >= 1, weights >= 0)")
            weights[level] = weight
        object.__setattr__(self, "difficulty_weights", weights)  # "3" (YAML, JSON) and 3 are the same level
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")

    @property
    def levels(self) -> list[int]:
        return sorted(int(k) for k in self.difficulty_weights)
