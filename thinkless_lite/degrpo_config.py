"""The DeGRPO trainer's arguments: TRL's ``GRPOConfig`` plus DeGRPO's own fields (TRL's and open-r1's pattern).

Imports TRL, so it is imported after the model backend is chosen (``stages.setup.prepare_stage``): under Unsloth,
``trl.GRPOConfig`` is then Unsloth's subclass and this class inherits it, as the trainer inherits Unsloth's
``GRPOTrainer``. The fields, their help and their check live in :mod:`thinkless_lite.degrpo_settings`, shared with
the recipe's ``rl`` section; the trainer reads them as ``self.args.<field>``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from trl import GRPOConfig

from thinkless_lite.degrpo_settings import DeGRPOSettings
from thinkless_lite.parsing import ConfigError

DEGRPO_FIELDS = tuple(f.name for f in fields(DeGRPOSettings))


# init=False: TRL's (or Unsloth's own) __init__ builds the GRPOConfig part, so Unsloth's config keeps its set-up.
@dataclass(init=False, repr=False)
class DeGRPOConfig(DeGRPOSettings, GRPOConfig):
    """``GRPOConfig`` with DeGRPO's settings; the defaults are the ``mini`` recipe's. A run's comes from its recipe
    (``stages.rl.grpo_config``), where ``censor_truncated`` is already resolved to true or false."""

    def __init__(self, *args, **kwargs):
        DeGRPOSettings.__init__(self, **{name: kwargs.pop(name) for name in DEGRPO_FIELDS if name in kwargs})
        GRPOConfig.__init__(self, *args, **kwargs)  # runs __post_init__, below

    def __post_init__(self):
        super().__post_init__()
        if self.loss_type != "dapo":
            raise ConfigError(f"DeGRPOConfig needs loss_type='dapo' (token-sum over the generation batch); "
                              f"got {self.loss_type!r}")
        if self.censor_truncated and not self.mask_truncated_completions:
            raise ConfigError("censor_truncated needs mask_truncated_completions=True, so that TRL's loss and "
                              "attention leave the cut-off answers out too (stages.rl.grpo_config sets it)")
        self.check_degrpo(self.num_generations, self.max_steps, censoring=bool(self.censor_truncated),
                          scale_rewards=self.scale_rewards)
