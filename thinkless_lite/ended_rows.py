"""Decode only the rows that are still writing: transformers' ``generate`` runs every row of a batch to the last
token, so once most answers of a DeGRPO batch have ended, most of each decode step's work is on rows it will
throw away (46-61% of the positions SmolLM2's RL steps decoded, docs/long_runs.md).

:func:`ended_rows_dropped` wraps ``model.generate``; during the call, the forward that ``generate`` calls once
per token runs on the rows that have not yet fed an end-of-sequence token, and shrinks the KV cache to them
(transformers' ``Cache.batch_select_indices``). The rows that ended get logits of zeros, which ``generate``
still samples from and then replaces by the pad token, as it always does for an ended row: the sampler draws
for every row as before, so the random stream, and every live row's token, stay what they were. What can
differ is float rounding in matmuls of another row count (the tests compare the tokens, and after a DeGRPO
step the trained weights).
"""

from __future__ import annotations

import contextlib
import functools

import torch

from thinkless_lite.compat import instance_attribute, unsloth_patched


def _eos_ids(model, kwargs: dict) -> list[int]:
    """The ids that end a row in this ``generate`` call, as ``generate`` resolves them: the call's
    ``eos_token_id``, else its ``generation_config``'s, else the model's."""
    config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    ids = kwargs.get("eos_token_id", getattr(config, "eos_token_id", None))
    if ids is None:
        return []
    return [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids if isinstance(ids, (list, tuple))
                             else [ids])]


class _LiveRows:
    """One ``generate`` call's bookkeeping: which rows of the batch the KV cache still holds."""

    def __init__(self, eos_ids: list[int]):
        self.eos = torch.tensor(eos_ids, dtype=torch.long)
        self.rows: torch.Tensor | None = None  # the batch rows the cache holds, in its order
        self.ended: torch.Tensor | None = None

    def forward(self, forward, *args, **kwargs):
        input_ids, cache = kwargs.get("input_ids"), kwargs.get("past_key_values")
        decoding = (not args and input_ids is not None and input_ids.shape[1] == 1 and cache is not None
                    and hasattr(cache, "batch_select_indices") and cache.get_seq_length() > 0
                    and self.rows is not None and input_ids.shape[0] == self.ended.shape[0])
        if not decoding:  # the prefill (or a call this does not know): every row, and the count starts anew
            out = forward(*args, **kwargs)
            batch = input_ids.shape[0] if input_ids is not None else None
            self.rows = torch.arange(batch) if batch else None
            self.ended = torch.zeros(batch, dtype=torch.bool) if batch else None
            return out
        self.ended |= torch.isin(input_ids[:, -1].cpu(), self.eos)
        live = (~self.ended).nonzero().flatten()
        if 0 < len(live) < len(self.rows):  # with none left, generate stops after this step: keep what is there
            keep = torch.isin(self.rows, live).nonzero().flatten()
            cache.batch_select_indices(keep.to(input_ids.device))
            self.rows = self.rows[keep]
        return self._decode(forward, input_ids, kwargs)

    def _decode(self, forward, input_ids: torch.Tensor, kwargs: dict):
        """The forward on the rows the cache holds, its logits laid back into the whole batch (zeros for the
        rows that ended)."""
        batch = input_ids.shape[0]
        index = self.rows.to(input_ids.device)
        sliced = {key: (value.index_select(0, index) if isinstance(value, torch.Tensor) and value.dim() > 0
                        and value.shape[0] == batch and key != "cache_position" else value)
                  for key, value in kwargs.items()}
        out = forward(**sliced)
        whole = out.logits.new_zeros((batch, *out.logits.shape[1:]))
        whole[index] = out.logits
        out.logits = whole
        return out


@contextlib.contextmanager
def ended_rows_dropped(model, enabled: bool = True):
    """While inside, ``model.generate`` decodes only the rows that have not ended (see the module's docstring).
    ``model``: a transformers model or a PEFT model around one. Left as it is under Unsloth (its own fast
    generation) or when ``enabled`` is False."""
    if not enabled or unsloth_patched(model):
        yield model
        return
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    generate, forward = model.generate, inner.forward  # greedy_rows' or Unsloth's, where one sits on the instance

    def generate_live_rows(*args, **kwargs):
        rows = _LiveRows(_eos_ids(inner, kwargs))
        if not len(rows.eos):
            return generate(*args, **kwargs)
        with instance_attribute(inner, "forward", functools.partial(rows.forward, forward)):
            return generate(*args, **kwargs)

    with instance_attribute(model, "generate", generate_live_rows):
        yield model
