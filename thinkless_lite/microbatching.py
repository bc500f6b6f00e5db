"""Micro-batches of similar length for the log-prob forward, so a short answer is not computed padded to a long one.

A generation batch mixes ``<short>`` answers (~12 tokens) with ``<think>`` ones (~100+); TRL scores it as one
rectangle, every row as wide as the longest. Here the rows are grouped by length and each group is cut after its
own last real column. Nothing a loss reads changes: completions are right-padded and the model is causal, so a
real position never sees the columns cut away (positions stay ``0..width-1``, prompts keep their left padding),
and a cut position is one the loss masks out anyway; it comes back as log-prob 0 and entropy 0.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

# What a micro-batch costs beyond its tokens (a forward's fixed overhead), in padded-token equivalents: a split
# must save more than this many padded tokens to be worth a forward of its own.
MICRO_BATCH_OVERHEAD_TOKENS = 256

LogpsForward = Callable[[torch.Tensor, torch.Tensor, int], tuple]


def needed_widths(attention_mask: torch.Tensor, min_width: int) -> list[int]:
    """Columns each row needs: up to its last attended token (right padding after it is never read by the
    positions before it), and at least ``min_width`` (the prompt and one scored column)."""
    columns = torch.arange(1, attention_mask.shape[1] + 1, device=attention_mask.device)
    last = (attention_mask.bool() * columns).amax(dim=1)
    return last.clamp(min=min_width).tolist()


def length_groups(widths: list[int], max_rows: int | None = None,
                  overhead: int = MICRO_BATCH_OVERHEAD_TOKENS) -> list[list[int]]:
    """Row indices split into micro-batches of similar width, at most ``max_rows`` each: the split of the rows
    sorted by width that computes the fewest padded tokens (rows x widest), ``overhead`` counted per micro-batch.
    Exact over contiguous splits of the sorted rows (dynamic programming; batches are tens of rows)."""
    order = sorted(range(len(widths)), key=lambda row: widths[row])
    limit = max_rows or len(widths) or 1
    best = [0] + [float("inf")] * len(order)  # best[j]: cheapest split of the j narrowest rows
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        widest = widths[order[end - 1]]
        for start in range(max(0, end - limit), end):
            cost = best[start] + (end - start) * widest + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[cut[end]:end])
        end = cut[end]
    return groups[::-1]


def length_grouped_logps(forward: LogpsForward, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         logits_to_keep: int, max_rows: int | None = None,
                         overhead: int = MICRO_BATCH_OVERHEAD_TOKENS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``forward(ids, mask, logits_to_keep) -> (logps, entropies or None, ...)`` run once per length group on its
    rows cut to the group's width; the ``(B, logits_to_keep)`` results back in the original row order, zeros in
    the cut columns. Differentiable: the gradient reaches every micro-batch's forward."""
    prompt_width = input_ids.shape[1] - logits_to_keep
    widths = needed_widths(attention_mask, prompt_width + 1)
    groups = length_groups(widths, max_rows, overhead)
    logps, entropies = [], []
    for rows in groups:
        width = max(widths[row] for row in rows)
        index = torch.tensor(rows, device=input_ids.device)
        out = forward(input_ids[index, :width], attention_mask[index, :width], width - prompt_width)
        logps.append(F.pad(out[0], (0, input_ids.shape[1] - width)))
        if out[1] is not None:
            entropies.append(F.pad(out[1], (0, input_ids.shape[1] - width)))
    order = torch.tensor([row for rows in groups for row in rows], device=input_ids.device)
    back = torch.argsort(order)  # where each original row landed in the concatenation
    logps = torch.cat(logps)[back]
    return logps, (torch.cat(entropies)[back] if entropies else None)
