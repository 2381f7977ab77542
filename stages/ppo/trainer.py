"""One PPO iteration after the rollout: rewards with the KL penalty, GAE, then several epochs of clipped
policy and value updates over shuffled mini-batches (gradient accumulation over micro-batches)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from stages.ppo.config import PpoSettings
from stages.ppo.losses import (
    KLController,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    kl_penalised_rewards,
    logprobs_of,
    masked_mean,
    masked_whiten,
)
from stages.ppo.models import Roles, trained_outputs
from stages.ppo.rollout import Trajectory


@dataclass
class Optimisation:
    """What updates the trained pair: one optimiser with a policy and a critic parameter group.

    The accelerator is built with `gradient_accumulation_steps` = micro-batches per mini-batch, so
    `accelerator.accumulate` marks the last micro-batch of each mini-batch (DeepSpeed steps its engine there)."""

    accelerator: object  # accelerate.Accelerator
    optimizer: torch.optim.Optimizer
    scheduler: object
    max_grad_norm: float
    deepspeed: bool = False  # the engine clips and steps inside backward()


def advantages_and_returns(rollout: Trajectory, kl: KLController, ppo: PpoSettings) -> dict[str, torch.Tensor]:
    """Per-token rewards (score on the last token, -beta * KL on every token), GAE advantages (whitened)
    and value targets."""
    mask = rollout.response_mask
    rewards, token_kl = kl_penalised_rewards(rollout.scores, rollout.logprobs, rollout.ref_logprobs, mask, kl.value)
    advantages, returns = gae(rewards, rollout.values, mask, ppo.gamma, ppo.lam)
    if ppo.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    return {"rewards": rewards, "advantages": advantages, "returns": returns, "kl": token_kl.sum(1)}


def ppo_update(roles: Roles, opt: Optimisation, rollout: Trajectory, targets: dict[str, torch.Tensor],
               ppo: PpoSettings, temperature: float, micro_batch_size: int, ptx_batches=None) -> dict[str, float]:
    """`ppo.epochs` passes over the rollout in mini-batches; returns the mean of each logged quantity.
    Every mini-batch splits into the same number of micro-batches (the stage checks it divides)."""
    accelerator = opt.accelerator
    size = len(rollout)
    mini = max(1, ppo.mini_batch_size // accelerator.num_processes)
    micro = min(micro_batch_size, mini)
    prompt_length = rollout.queries.shape[1]
    trained = roles.trained
    stats: dict[str, list[float]] = {}

    def log(name: str, value: torch.Tensor | float) -> None:
        stats.setdefault(name, []).append(float(value))

    for _ in range(ppo.epochs):
        order = torch.randperm(size, device=rollout.queries.device)
        for start in range(0, size, mini):
            for part in order[start : start + mini].split(micro):
                with accelerator.accumulate(trained):
                    sample = rollout.select(part)
                    mask = sample.response_mask
                    ids, attention = sample.sequences()
                    advantages, returns = targets["advantages"][part], targets["returns"][part]
                    ptx_ids = ptx_batches.next_batch() if ptx_batches is not None else None

                    logits, values, ptx_loss = trained_outputs(trained, ids, attention, prompt_length, temperature,
                                                               ptx_ids)
                    logprobs = logprobs_of(logits, sample.responses)
                    policy = clipped_policy_loss(logprobs, sample.logprobs, advantages, mask, ppo.clip_range)
                    value_loss, value_clip = clipped_value_loss(values, sample.values, returns, mask,
                                                                ppo.value_clip_range)
                    loss = policy.loss + ppo.value_coef * value_loss
                    if ptx_loss is not None:
                        loss = loss + ppo.ptx.coef * ptx_loss
                        log("ptx/loss", ptx_loss.detach())
                    # accelerate divides by the accumulation steps: the mini-batch loss is the micro-batches' mean
                    accelerator.backward(loss)

                    log("policy/loss", policy.loss.detach())
                    log("policy/clip_fraction", policy.clip_fraction)
                    log("policy/approx_kl", policy.approx_kl)
                    log("value/loss", value_loss.detach())
                    log("value/clip_fraction", value_clip)
                    with torch.no_grad():
                        log("policy/entropy", masked_mean(entropy_from_logits(logits), mask))
            # one gradient norm over policy and critic, clipped together: what a DeepSpeed engine does, so a
            # run gives the same weights whatever its launch settings
            norm = accelerator.clip_grad_norm_(trained.parameters(), opt.max_grad_norm)
            if opt.deepspeed:  # the engine stepped at the last micro-batch (and skips overflowing fp16 steps)
                if norm is not None:
                    log("train/grad_norm", norm)
                opt.scheduler.step()
                continue
            # a non-finite gradient (an overflowing ratio, a NaN loss) would poison the weights: skip the step,
            # as mixed-precision loss scalers do, and count it
            finite = bool(torch.isfinite(torch.as_tensor(norm)))
            log("train/skipped_step_fraction", 0.0 if finite else 1.0)
            if finite:
                log("train/grad_norm", norm)
                opt.optimizer.step()
            opt.scheduler.step()
            opt.optimizer.zero_grad(set_to_none=True)
    return {name: sum(values) / len(values) for name, values in stats.items()}


def iteration(roles: Roles, opt: Optimisation, rollout: Trajectory, kl: KLController, ppo: PpoSettings,
              temperature: float, micro_batch_size: int, ptx_batches=None) -> dict[str, float]:
    """Advantages, PPO epochs and the KL controller's update for one rollout; the iteration's statistics."""
    start = time.perf_counter()
    targets = advantages_and_returns(rollout, kl, ppo)
    stats = ppo_update(roles, opt, rollout, targets, ppo, temperature, micro_batch_size, ptx_batches)
    sequence_kl = opt.accelerator.gather(targets["kl"]).mean().item()
    stats.update({
        "score/mean": opt.accelerator.gather(rollout.raw_scores).mean().item(),
        "score/std": opt.accelerator.gather(rollout.raw_scores).std().item() if len(rollout) > 1 else 0.0,
        "kl/mean": sequence_kl,
        "kl/beta": kl.value,
        "reward/mean_total": opt.accelerator.gather(targets["rewards"].sum(1)).mean().item(),
        "response/length": opt.accelerator.gather(rollout.response_mask.sum(1).float()).mean().item(),
        "rollout/entropy": masked_mean(rollout.entropy, rollout.response_mask).item(),
        "learning_rate": opt.scheduler.get_last_lr()[0],
        "time/train": time.perf_counter() - start,
    })
    kl.update(sequence_kl, ppo.rollout_batch_size)
    return stats
