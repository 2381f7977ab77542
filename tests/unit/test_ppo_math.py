"""PPO's math against plain loops and numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from stages.common.generation import response_mask
from stages.ppo.losses import (
    KLController,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_penalised_rewards,
    last_token_index,
    masked_mean,
    masked_whiten,
)


def test_response_mask_keeps_the_first_eos_and_drops_what_follows():
    eos, pad = 2, 0
    responses = torch.tensor([[5, 6, eos, pad, pad],   # stopped: EOS kept, padding dropped
                              [5, eos, 7, eos, 8],     # tokens after the first EOS dropped
                              [5, 6, 7, 8, 9],         # cut at max_new_tokens: all kept
                              [eos, eos, eos, eos, eos]])  # pad == eos: only the first counts
    assert response_mask(responses, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1],
                                                      [1, 0, 0, 0, 0]]
    assert last_token_index(response_mask(responses, eos)).tolist() == [2, 1, 4, 0]


def test_kl_penalty_on_every_token_and_score_on_the_last_real_one():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-0.1, -0.2, -0.3, -0.4]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -9.0], [-0.2, -0.2, -0.1, -0.1]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    scores = torch.tensor([2.0, -1.0])
    beta = 0.1
    rewards, kl = kl_penalised_rewards(scores, logprobs, ref, mask=mask, beta=beta)
    expected = [[-beta * 0.5, -beta * -1.0, -beta * 0.0 + 2.0, 0.0],
                [-beta * 0.1, 0.0, -beta * -0.2, -beta * -0.3 - 1.0]]
    assert torch.allclose(rewards, torch.tensor(expected), atol=1e-6)
    assert kl[0, 3].item() == 0.0  # the token after EOS carries no KL


def reference_gae(rewards, values, length, *, gamma, lam):
    """Textbook GAE on one episode of `length` steps: V after the end is 0."""
    advantages, last = [0.0] * length, 0.0
    for t in reversed(range(length)):
        next_value = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lam * last
        advantages[t] = last
    return advantages


def test_gae_matches_the_textbook_loop_per_episode():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    lengths = [6, 4, 1]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    for row, n in enumerate(lengths):
        expected = reference_gae(rewards[row, :n].tolist(), values[row, :n].tolist(), n, gamma=gamma, lam=lam)
        assert advantages[row, :n].tolist() == pytest.approx(expected, abs=1e-6)
        assert advantages[row, n:].abs().sum() == 0 and returns[row, n:].abs().sum() == 0
        assert returns[row, :n].tolist() == pytest.approx([a + v for a, v in zip(expected, values[row, :n].tolist())],
                                                         abs=1e-6)


def test_gae_by_hand_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.25, 0.75]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert advantages[0].tolist() == pytest.approx([0.5, 0.75, 0.25])
    assert returns[0].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_masked_mean_and_whiten_ignore_masked_entries():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert masked_mean(values, mask).item() == pytest.approx(2.5)
    whitened = masked_whiten(values, mask)
    std = math.sqrt(sum((v - 2.5) ** 2 for v in (1, 2, 3, 4)) / 3)
    expected = [[(1 - 2.5) / std, (2 - 2.5) / std, 0.0], [(3 - 2.5) / std, (4 - 2.5) / std, 0.0]]
    assert torch.allclose(whitened, torch.tensor(expected), atol=1e-6)


def test_clipped_policy_loss_by_hand():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.75, 0.25, 0.55]]))  # ratios 1.5, 0.5, 1.1
    advantages = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.tensor([[1, 1, 1]])
    out = clipped_policy_loss(new, old, advantages, mask=mask, clip_range=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5; token 2: max(2.2, 2.2) = 2.2
    assert out.loss.item() == pytest.approx((-1.2 - 0.5 + 2.2) / 3, abs=1e-6)
    assert out.clip_fraction.item() == pytest.approx(1 / 3)
    ratios = torch.tensor([1.5, 0.5, 1.1])
    assert out.approx_kl.item() == pytest.approx(((ratios - 1) - ratios.log()).mean().item(), abs=1e-6)

    # the gradient flows only through unclipped tokens
    new = new.clone().requires_grad_(True)
    clipped_policy_loss(new, old, advantages, mask=mask, clip_range=0.2).loss.backward()
    assert new.grad[0, 0].item() == 0.0 and new.grad[0, 1].item() != 0.0


def test_clipped_value_loss_by_hand():
    old = torch.tensor([[1.0, 1.0]])
    new = torch.tensor([[2.0, 0.9]])
    returns = torch.tensor([[3.0, 0.0]])
    loss, clip_fraction = clipped_value_loss(new, old, returns, mask=torch.tensor([[1, 1]]), clip_range=0.5)
    # token 0: clipped value 1.5 -> max((2-3)^2, (1.5-3)^2) = 2.25; token 1: max(0.81, 0.81) = 0.81
    assert loss.item() == pytest.approx(0.5 * (2.25 + 0.81) / 2)
    assert clip_fraction.item() == pytest.approx(0.5)


def test_adaptive_kl_controller_moves_beta_towards_the_target():
    fixed = KLController(0.02)
    fixed.update(100.0, 64)
    assert fixed.value == 0.02
    adaptive = KLController(0.1, target=6.0, horizon=1000)
    adaptive.update(12.0, 100)  # twice the target: error clipped at +0.2
    assert adaptive.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 1000))
    adaptive.update(3.0, 100)  # half the target: error clipped at -0.2
    assert adaptive.value == pytest.approx(0.1 * 1.02 * (1 - 0.02))
    restored = KLController(0.5, target=6.0)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value == adaptive.value


def test_whitening_over_processes_equals_whitening_the_whole_batch():
    torch.manual_seed(0)
    values, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).long()
    whole = masked_whiten(values, mask)
    shares = [(slice(0, 2), values[:2], mask[:2]), (slice(2, 6), values[2:], mask[2:])]  # two processes, unequal
    total = (values * mask).sum()
    mean = total / mask.sum()

    def reduce_sum(own):
        """What accelerator.reduce(own, "sum") gives: the first statistic is (sum, count), the second the squared
        deviations; both summed over the two shares."""
        if own.dim() == 1:
            return torch.stack([total, mask.sum().float()])
        return sum((((v - mean) ** 2) * m).sum() for _, v, m in shares)

    for rows, v, m in shares:
        assert torch.allclose(masked_whiten(v, m, reduce_sum=reduce_sum), whole[rows], atol=1e-6)
    alone = masked_whiten(values[:2], mask[:2])  # a process whitening its own share alone differs
    assert not torch.allclose(alone, whole[:2], atol=1e-3)


def test_micro_batch_losses_add_up_to_the_token_mean_of_the_mini_batch():
    torch.manual_seed(1)
    old, new, advantages = torch.randn(5, 6), torch.randn(5, 6), torch.randn(5, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 1, 1]])
    whole = clipped_policy_loss(new, old, advantages, mask=mask, clip_range=0.2).loss
    parts = [slice(0, 2), slice(2, 5)]  # 7 and 12 tokens
    summed = sum(clipped_policy_loss(new[p], old[p], advantages[p], mask=mask[p], clip_range=0.2, normalizer=mask.sum()).loss
                 for p in parts)
    assert summed.item() == pytest.approx(whole.item(), abs=1e-6)
    means = sum(clipped_policy_loss(new[p], old[p], advantages[p], mask=mask[p], clip_range=0.2).loss for p in parts) / 2
    assert means.item() != pytest.approx(whole.item(), abs=1e-3)  # the mean of micro-batch means weighs rows unevenly
    values, returns = torch.randn(5, 6), torch.randn(5, 6)
    whole_value, _ = clipped_value_loss(values, old, returns, mask=mask, clip_range=0.5)
    summed_value = sum(clipped_value_loss(values[p], old[p], returns[p], mask=mask[p], clip_range=0.5, normalizer=mask.sum())[0]
                       for p in parts)
    assert summed_value.item() == pytest.approx(whole_value.item(), abs=1e-6)
