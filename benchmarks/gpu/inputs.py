"""What the check feeds the trainer: prompts of mixed lengths, a fake reward, the loss check's batch.

Prompt lengths are spread from ``--prompt-len`` down to half of it, in both modes. With one length for
every prompt the prompt mask is all ones, and Unsloth's loss, which moves each row's left padding to
its end before scoring, would get the same (trivial) layout as TRL's: a wrong re-layout of DeGRPO's
per-token advantages (``thinkless_lite.compat.unsloth_loss_inputs``) could not show.
"""

from __future__ import annotations

# Rewards by position in the generation batch: every group of >= 2 has varied rewards (none dropped).
REWARD_PATTERN = [1.0, 0.5, -1.0, 0.5, 1.0, -1.0, 0.5, -1.0]


def varied_reward(completions, **kwargs) -> list[float]:
    """Fake reward: varied within every group, so DeGRPO drops nothing and every sequence has a gradient."""
    return [REWARD_PATTERN[i % len(REWARD_PATTERN)] for i in range(len(completions))]


def prompt_lengths(n: int, length: int) -> list[int]:
    """``n`` lengths spread evenly from ``length`` down to ``length // 2`` (at least 1 token)."""
    low = max(1, length // 2)
    return [length - (i * (length - low)) // max(n - 1, 1) for i in range(n)]


def make_prompts(tokenizer, steps: int, per_step: int, length: int, seed: int) -> list[str]:
    """Prompts for ``steps`` steps of ``per_step`` prompts (lower-case letters and spaces: one token per byte).

    The dataset is read in order, so each step gets the same spread, ``prompt_lengths(per_step, length)``:
    every step is the same work, and its micro-batches mix different left padding."""
    import random

    rng = random.Random(seed)
    prompts = []
    for size in prompt_lengths(per_step, length) * steps:
        text = "".join(" " if i % 6 == 5 else rng.choice("abcdefghijklmnopqrstuvwxyz") for i in range(size))
        got = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if got != size:
            raise RuntimeError(f"synthetic prompt encodes to {got} tokens, expected {size}")
        prompts.append(text)
    return prompts


def loss_check_batch(pad_id: int, rows: int, group: int, prompt_len: int, completion_len: int, alpha: float,
                     seed: int, control_ids: list[int] | None = None) -> dict:
    """A fixed micro-batch as TRL hands it to the loss: left-padded prompts of mixed lengths (every row its
    own length), completions of lengths ``C`` down to about ``C/2`` (right-padded), byte tokens only (never
    the pad token), rewards varied in each group of ``group``, DeGRPO's per-token weights.

    At ratio 1 (no old log-probs) the clipped surrogate's value is ``-sum(A_bt * mask) / N`` whatever the
    model: ``expected_loss_bt``. ``expected_loss_b`` is what one advantage per sequence would give.
    With ``control_ids``, every completion opens with one of them in turn (``<short>``, ``<think>``), as
    DeGRPO's completions do: the control rows of the input embedding then get gradients too."""
    import torch

    from thinkless_lite.losses import loss_token_weights

    if 1 <= pad_id <= 256:
        raise ValueError(f"pad token id {pad_id} is a byte token of the synthetic tokenizer")
    g = torch.Generator().manual_seed(seed)
    lengths = prompt_lengths(rows, prompt_len)
    prompt_ids = torch.full((rows, prompt_len), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_ids)
    for i, n in enumerate(lengths):
        prompt_ids[i, prompt_len - n:] = torch.randint(1, 257, (n,), generator=g)
        prompt_mask[i, prompt_len - n:] = 1
    c = completion_len
    completion_ids = torch.randint(1, 257, (rows, c), generator=g)
    ends = torch.tensor([max(2, c - (i * c) // (2 * rows)) for i in reversed(range(rows))])
    mask = (torch.arange(c)[None, :] < ends[:, None]).long()
    if control_ids:
        completion_ids[:, 0] = torch.tensor([control_ids[i % len(control_ids)] for i in range(rows)])
    completion_ids[mask == 0] = pad_id
    rewards = torch.tensor(varied_reward(range(rows)))
    grouped = rewards.view(-1, group)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)  # scale_rewards off, as released
    n = mask.sum().float()
    per_token = advantages[:, None] * loss_token_weights(mask.float(), alpha=alpha, decoupled=True, normalizer=n)
    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": mask, "num_items_in_batch": n, "advantages_bt": per_token, "advantages_b": advantages,
        "expected_loss_bt": float(-(per_token * mask).sum() / n),
        "expected_loss_b": float(-(advantages[:, None] * mask).sum() / n),
    }
