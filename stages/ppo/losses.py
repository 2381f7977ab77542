"""PPO's math as pure functions on [B, T] response tensors (T = response tokens; `mask` is 1 on real ones).

Each is tested against a straightforward loop written in tests/test_ppo_math.py. Conventions (as in
Ziegler et al. 2019, InstructGPT and TRL's former PPOTrainer):
- the per-token reward is -beta * (log pi - log pi_ref), and the reward model's score is added on the last
  real response token;
- advantages are GAE(gamma, lambda) over the real tokens, whitened over the rollout's real tokens on all
  processes (`reduce_sum` sums a statistic over them);
- the policy loss is the clipped surrogate, the value loss the clipped squared error, both averaged over
  the real tokens of a mini-batch: a micro-batch contributes its token sum divided by the mini-batch's
  token count (`normalizer`), so short micro-batches weigh what their tokens weigh.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is 1."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def no_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """One process: a sum over processes is the tensor itself."""
    return tensor


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True,
                  reduce_sum: Callable[[torch.Tensor], torch.Tensor] = no_reduce) -> torch.Tensor:
    """(values - mean) / std over the masked entries (unbiased variance); masked-out entries become 0.
    `reduce_sum` sums a tensor over processes (e.g. accelerator.reduce(t, "sum")): the statistics are then
    those of every process's entries, so the result does not depend on how a batch is split."""
    mask = mask.to(values.dtype)
    total, count = reduce_sum(torch.stack([(values * mask).sum(), mask.sum()]))
    mean = total / count.clamp(min=1)
    variance = reduce_sum((((values - mean) ** 2) * mask).sum()) / (count - 1).clamp(min=1)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """[B] index of the last real token of each row (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask).amax(dim=1)


def kl_penalised_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         *, mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token rewards [B, T], per-token KL estimate [B, T]): -beta * KL on every real token, plus the
    score on the last real one."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -beta * kl
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) [B, T] by generalised advantage estimation. Masks only cut a suffix (tokens after
    EOS), so with values and rewards zeroed there the value after the last real token is 0: the episode ends."""
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


@dataclass
class PolicyLoss:
    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor


def token_average(values: torch.Tensor, mask: torch.Tensor, normalizer: torch.Tensor | float | None) -> torch.Tensor:
    """Sum of `values` over real tokens divided by `normalizer` (the token count of the whole mini-batch this
    micro-batch belongs to); without one, the mean over this batch's real tokens."""
    if normalizer is None:
        return masked_mean(values, mask)
    return (values * mask).sum() / normalizer


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        *, mask: torch.Tensor, clip_range: float,
                        normalizer: torch.Tensor | float | None = None) -> PolicyLoss:
    """PPO's clipped surrogate: max(-A r, -A clip(r, 1-eps, 1+eps)), r = pi/pi_old, averaged over real tokens
    (token_average). The clip fraction and approximate KL are this batch's own means."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = token_average(torch.maximum(unclipped, clipped), mask, normalizer)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)  # k3 estimator of KL(old || new)
    return PolicyLoss(loss, clip_fraction, approx_kl)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, *, mask: torch.Tensor,
                       clip_range: float, normalizer: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, clip fraction): 0.5 * max((V - R)^2, (V_clipped - R)^2) averaged over real tokens (token_average),
    where V_clipped stays within clip_range of the rollout's value."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped - returns) ** 2
    loss = 0.5 * token_average(torch.maximum(unclipped_error, clipped_error), mask, normalizer)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clip_fraction


class KLController:
    """The KL coefficient beta: fixed, or adapted towards a target KL (Ziegler et al. 2019, section 2.2):
    beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon) after each batch of n samples."""

    def __init__(self, beta: float, target: float | None = None, horizon: int = 10000):
        self.value = beta
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, n_samples: int) -> None:
        """Move beta after a rollout whose mean sequence KL was `kl` (no-op when fixed)."""
        if self.target is None or not math.isfinite(kl):
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon

    def state_dict(self) -> dict:
        """The JSON a checkpoint keeps of it (stages.ppo.stage.save_checkpoint)."""
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        """Restore beta from a checkpoint."""
        self.value = state["value"]
