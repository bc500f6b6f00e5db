"""DeGRPO loss: hand-computed values, gradients, clipping, empty masks, advantages, token weights."""

import math

import pytest
import torch

from thinkless_lite.losses import (
    degrpo_loss,
    group_advantages,
    informative_groups,
    loss_token_weights,
)

torch.set_num_threads(1)


def _on_policy(batch: int, length: int, requires_grad: bool = True):
    """logps == old_logps, so every ratio is 1 and the loss is -A averaged by the scheme."""
    logps = torch.zeros(batch, length, requires_grad=requires_grad)
    return logps, torch.zeros(batch, length)


def _bnpo(logps, old_logps, token_advantages, mask, clip_eps=0.2):
    """A stock token-sum trainer loss (TRL "bnpo"): sum(max(-A r, -A clip r) * mask) / mask.sum()."""
    ratio = torch.exp(logps - old_logps)
    loss = torch.maximum(-token_advantages * ratio,
                         -token_advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps))
    return (loss * mask).sum() / mask.sum()


# --- hand-computed values -------------------------------------------------------------------

def test_decoupled_and_vanilla_by_hand():
    logps, old = _on_policy(2, 3)
    advantages = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # per-token losses -A: row 0 = [-1, -1, -1], row 1 = [2, 2, (pad)]
    # control mean = (-1 + 2) / 2 = 0.5; response mean = (-1 - 1 + 2) / 3 = 0
    assert degrpo_loss(logps, old, advantages, mask, alpha=0.5).item() == pytest.approx(0.25)
    assert degrpo_loss(logps, old, advantages, mask, alpha=1.0).item() == pytest.approx(0.5)
    # vanilla: sequence means -1 and 2, then their mean 0.5
    assert degrpo_loss(logps, old, advantages, mask, decoupled=False).item() == pytest.approx(0.5)


def test_response_mean_is_over_all_tokens_of_the_batch_not_per_sequence():
    logps, old = _on_policy(2, 5)
    advantages = torch.tensor([1.0, 1.0])
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    # response tokens: 1 (row 0) + 4 (row 1), each loss -1 -> mean -1 whatever the split
    assert degrpo_loss(logps, old, advantages, mask, alpha=0.0).item() == pytest.approx(-1.0)
    advantages = torch.tensor([2.0, 0.0])
    # response losses: row 0 one token at -2, row 1 four tokens at 0 -> -2 / 5
    assert degrpo_loss(logps, old, advantages, mask, alpha=0.0).item() == pytest.approx(-0.4)
    # vanilla: row 0 mean (-2 - 2) / 2 = -2, row 1 mean 0 -> -1
    assert degrpo_loss(logps, old, advantages, mask, decoupled=False).item() == pytest.approx(-1.0)


def test_per_token_advantages_match_per_sequence_ones():
    torch.manual_seed(0)
    logps, old = torch.randn(3, 4), torch.randn(3, 4)
    advantages = torch.tensor([0.5, -1.0, 2.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    expanded = advantages[:, None].expand(3, 4)
    for decoupled in (True, False):
        assert degrpo_loss(logps, old, expanded, mask, decoupled=decoupled).item() == pytest.approx(
            degrpo_loss(logps, old, advantages, mask, decoupled=decoupled).item())


# --- clipping -------------------------------------------------------------------------------

def _ratio_batch():
    """Four one-token sequences: ratio 1.5 or 0.5, advantage +1 or -1."""
    ratios = torch.tensor([[1.5], [1.5], [0.5], [0.5]])
    logps = torch.log(ratios).requires_grad_(True)
    return logps, torch.zeros(4, 1), torch.tensor([1.0, -1.0, 1.0, -1.0]), torch.ones(4, 1)


def test_clipping_on_both_sides_by_hand():
    logps, old, advantages, mask = _ratio_batch()
    # r=1.5, A=+1: max(-1.5, -1.2) = -1.2 (clipped)   r=1.5, A=-1: max(1.5, 1.2) = 1.5
    # r=0.5, A=+1: max(-0.5, -0.8) = -0.5             r=0.5, A=-1: max(0.5, 0.8) = 0.8 (clipped)
    loss = degrpo_loss(logps, old, advantages, mask, alpha=1.0)
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4)
    loss.backward()
    # clipped tokens get no gradient; unclipped get d(-A r)/dlogp = -A r, over 4 sequences
    assert logps.grad[:, 0].tolist() == pytest.approx([0.0, 1.5 / 4, -0.5 / 4, 0.0])


# --- gradients ------------------------------------------------------------------------------

def _control_grads(lengths, alpha, decoupled):
    batch, width = len(lengths), max(lengths)
    logps, old = _on_policy(batch, width)
    mask = torch.zeros(batch, width)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    degrpo_loss(logps, old, torch.ones(batch), mask, alpha=alpha, decoupled=decoupled).backward()
    return logps.grad[:, 0]


def test_decoupled_control_gradient_scales_with_alpha_not_length():
    short, long = _control_grads([2, 50], alpha=0.5, decoupled=True)
    assert short.item() == pytest.approx(long.item())  # same pull on <short> and <think>
    assert short.item() == pytest.approx(-0.5 / 2)  # -alpha * A / (number of sequences)
    scaled = _control_grads([2, 50], alpha=0.05, decoupled=True)
    assert scaled[0].item() == pytest.approx(short.item() / 10)


def test_vanilla_control_gradient_shrinks_with_length():
    short, long = _control_grads([2, 50], alpha=0.5, decoupled=False)
    assert short.item() == pytest.approx(-1 / (2 * 2))  # -A / (B * length)
    assert long.item() == pytest.approx(-1 / (2 * 50))
    assert short.item() / long.item() == pytest.approx(25.0)


def test_alpha_zero_freezes_the_control_token_and_alpha_one_weighs_it_fully():
    torch.manual_seed(1)
    old = torch.randn(3, 6)
    logps = (old + 0.05 * torch.randn(3, 6)).requires_grad_(True)
    advantages, mask = torch.tensor([1.0, -0.5, 2.0]), torch.ones(3, 6)
    degrpo_loss(logps, old, advantages, mask, alpha=0.0).backward()
    assert torch.all(logps.grad[:, 0] == 0)
    assert torch.all(logps.grad[:, 1:] != 0)
    response_grad = logps.grad[:, 1:].clone()

    logps.grad = None
    degrpo_loss(logps, old, advantages, mask, alpha=1.0).backward()
    ratio = torch.exp(logps.detach()[:, 0] - old[:, 0])
    assert logps.grad[:, 0].tolist() == pytest.approx((-advantages * ratio / 3).tolist())
    assert torch.allclose(logps.grad[:, 1:], response_grad)  # alpha never touches responses


# --- empty masks ----------------------------------------------------------------------------

@pytest.mark.parametrize("decoupled", [True, False])
def test_empty_masks_give_zero_loss_and_finite_gradients(decoupled):
    logps, old = _on_policy(2, 4)
    loss = degrpo_loss(logps, old, torch.tensor([1.0, -1.0]), torch.zeros(2, 4), decoupled=decoupled)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(torch.isfinite(logps.grad)) and torch.all(logps.grad == 0)


def test_sequences_without_response_tokens():
    logps, old = _on_policy(2, 3)
    mask = torch.tensor([[1, 0, 0], [0, 0, 0]])  # only a control token; an empty row
    loss = degrpo_loss(logps, old, torch.tensor([2.0, 5.0]), mask, alpha=0.5)
    assert loss.item() == pytest.approx(0.5 * -2.0)  # no response term, no NaN
    vanilla = degrpo_loss(logps, old, torch.tensor([2.0, 5.0]), mask, decoupled=False)
    assert vanilla.item() == pytest.approx(-2.0)  # the empty row is no sample: it does not dilute


def test_padding_with_infinite_logps_does_not_leak_nan():
    logps = torch.tensor([[0.0, -0.1, -math.inf]], requires_grad=True)
    old = torch.tensor([[0.0, -0.2, -math.inf]])
    mask = torch.tensor([[1, 1, 0]])
    loss = degrpo_loss(logps, old, torch.tensor([1.0]), mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.all(torch.isfinite(logps.grad))


# --- advantages and groups ------------------------------------------------------------------

def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.5, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    # group 1 mean = -0.125; group 2 is constant
    expected = [1.125, 0.625, -0.875, -0.875, 0.0, 0.0, 0.0, 0.0]
    assert group_advantages(rewards, 4).tolist() == pytest.approx(expected)
    std = math.sqrt((1.125**2 + 0.625**2 + 2 * 0.875**2) / 3)  # unbiased, as torch.std
    scaled = group_advantages(rewards, 4, scale_by_std=True)
    assert scaled[:4].tolist() == pytest.approx([a / (std + 1e-4) for a in expected[:4]])
    assert scaled[4:].tolist() == pytest.approx([0.0] * 4)  # 0 / (0 + eps), not NaN


def test_group_advantages_shape_errors_and_singletons():
    with pytest.raises(ValueError, match="multiple of 4"):
        group_advantages(torch.zeros(7), 4)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(4), 0)
    assert group_advantages(torch.tensor([3.0, -1.0]), 1, scale_by_std=True).tolist() == [0.0, 0.0]
    assert group_advantages(torch.tensor([1, 0]), 2).tolist() == [0.5, -0.5]  # integer rewards


def test_informative_groups():
    rewards = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 0.5, 1.0, 0.5])
    assert informative_groups(rewards, 3).tolist() == [False] * 6 + [True] * 3
    with pytest.raises(ValueError):
        informative_groups(rewards, 2)


# --- decoupled token weights ----------------------------------------------------------------

def test_decoupled_loss_token_weights_by_hand():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    weights = loss_token_weights(mask, alpha=0.1, decoupled=True)
    # 5 active tokens; 2 control tokens; 3 response tokens
    expected = torch.tensor([[0.1 * 5 / 2, 5 / 3, 5 / 3], [0.1 * 5 / 2, 5 / 3, 0.0]])
    assert torch.allclose(weights, expected)
    assert torch.all(loss_token_weights(torch.zeros(2, 3), 0.1, decoupled=True) == 0)
    with pytest.raises(ValueError):
        loss_token_weights(mask, alpha=-1.0, decoupled=True)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("alpha", [0.0, 0.001, 1.0])
def test_decoupled_loss_token_weights_reproduce_degrpo_through_a_token_sum_loss(seed, alpha):
    torch.manual_seed(seed)
    batch, width = 6, 9
    old = torch.randn(batch, width)
    logps = (old + 0.4 * torch.randn(batch, width)).requires_grad_(True)  # some ratios clip
    advantages = torch.randn(batch)
    lengths = torch.randint(0, width + 1, (batch,))
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()
    mask[0] = 0
    mask[1, 0], mask[1, 1:] = 1, 0  # a sequence with only its control token

    reference = degrpo_loss(logps, old, advantages, mask, alpha=alpha)
    weights = loss_token_weights(mask, alpha, decoupled=True)
    per_token = torch.maximum(-advantages[:, None] * torch.exp(logps - old),
                              -advantages[:, None] * torch.clamp(torch.exp(logps - old), 0.8, 1.2))
    identity = (weights * per_token * mask).sum() / mask.sum()
    assert identity.item() == pytest.approx(reference.item(), abs=1e-6)

    stock = _bnpo(logps, old, advantages[:, None] * weights, mask)
    assert stock.item() == pytest.approx(reference.item(), abs=1e-6)
    (grad_reference,) = torch.autograd.grad(reference, logps)
    (grad_stock,) = torch.autograd.grad(stock, logps)
    assert torch.allclose(grad_reference, grad_stock, atol=1e-6)


def _random_batch(seed: int, batch: int = 6, width: int = 9):
    torch.manual_seed(seed)
    old = torch.randn(batch, width)
    logps = (old + 0.4 * torch.randn(batch, width)).requires_grad_(True)
    advantages = torch.randn(batch)
    lengths = torch.randint(0, width + 1, (batch,))
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()
    mask[0] = 0
    return logps, old, advantages, mask


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("decoupled", [True, False])
def test_loss_token_weights_with_a_dapo_normaliser(seed, decoupled):
    logps, old, advantages, mask = _random_batch(seed)
    reference = degrpo_loss(logps, old, advantages, mask, alpha=0.3, decoupled=decoupled)
    num_items = mask.sum() + 17  # TRL counts tokens of groups we dropped too: any normaliser works
    weights = loss_token_weights(mask, 0.3, decoupled=decoupled, normalizer=num_items)
    ratio = torch.exp(logps - old)
    per_token = torch.maximum(-advantages[:, None] * weights * ratio,
                              -advantages[:, None] * weights * torch.clamp(ratio, 0.8, 1.2))
    assert ((per_token * mask).sum() / num_items).item() == pytest.approx(reference.item(), abs=1e-6)


@pytest.mark.parametrize("decoupled", [True, False])
def test_loss_token_weights_on_shards_with_global_counts(decoupled):
    """Two processes, each with half the batch and the global counts, sum to the whole-batch loss."""
    logps, old, advantages, mask = _random_batch(7, batch=8)
    reference = degrpo_loss(logps, old, advantages, mask, alpha=0.5, decoupled=decoupled)
    counts = dict(normalizer=mask.sum(), n_control=mask[:, 0].sum(), n_response=mask[:, 1:].sum(),
                  n_sequences=(mask.sum(1) > 0).sum())
    total = 0.0
    for shard in (slice(0, 4), slice(4, 8)):
        weights = loss_token_weights(mask[shard], 0.5, decoupled=decoupled, **counts)
        total += _bnpo(logps[shard], old[shard], advantages[shard, None] * weights, mask[shard]) \
            * mask[shard].sum() / mask.sum()
    assert total.item() == pytest.approx(reference.item(), abs=1e-6)


def test_loss_token_weights_vanilla_by_hand():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    # 6 tokens, 2 non-empty sequences of lengths 2 and 4: w = 6 / (2 * length)
    expected = torch.tensor([[1.5, 1.5, 0, 0], [0.75, 0.75, 0.75, 0.75], [0, 0, 0, 0]])
    assert torch.allclose(loss_token_weights(mask, 0.1, decoupled=False), expected)
    assert torch.all(loss_token_weights(torch.zeros(2, 3), 0.1, decoupled=False) == 0)


def test_the_threshold_shift_moves_every_prompt_of_the_batch_alike():
    """States sharing a large common part: along their mean a shift moves each prompt by its overlap with the mean
    (a re-ranking); along common_direction every one moves by exactly the amount asked."""
    from thinkless_lite.losses import common_direction, shift_log_odds_

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(16, generator=gen) * 3 + torch.randn(6, 16, generator=gen) * 0.3
    assert (hidden @ common_direction(hidden)).tolist() == pytest.approx([1.0] * 6, abs=1e-5)
    think, short = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    before = hidden @ (think - short)
    shift_log_odds_(think, short, hidden, 0.7)
    assert (hidden @ (think - short) - before).tolist() == pytest.approx([0.7] * 6, abs=1e-5)
    along_mean = hidden @ hidden.mean(0) / hidden.mean(0).pow(2).sum()
    assert along_mean.max() - along_mean.min() > 0.05  # what a shift along the mean alone would do
    many = torch.randn(40, 8, generator=gen)  # more prompts than dimensions: the mean direction, still +amount there
    assert (many.mean(0) @ common_direction(many)).item() == pytest.approx(1.0, abs=1e-5)
