"""Mixed-precision checks of the PPO loop, each run by tests/stages/test_ppo_loop.py in a fresh process (accelerate
sets its mixed precision once per process): `python -m tests.stages.precision_checks CHECK TMP_DIR`."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from stages.common.distribution import policy_logits, token_logprobs
from stages.common.generation import encode_prompts
from stages.ppo.losses import KLController
from stages.ppo.placement import Generators, build_models
from stages.ppo.rollout import score_answers
from stages.ppo.update import Optimization
from tests.stages.ppo_helpers import PROMPTS, generator, iteration, roles_of, rollout, tiny_models


def fp16_loss_scaling(tiny) -> None:
    """The loss scaler skips the step itself: skipping `optimizer.step()` by hand would leave it unscaled, and
    the next mini-batch would raise `unscale_() has already been called`. accelerate makes a GradScaler only
    on GPUs; a CPU one is put in its place here (before `prepare`, where accelerate hands it to the optimizer)."""
    tokenizer, policy, scorer = tiny
    roles = roles_of(policy, scorer)
    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    pair = roles.trained
    optimizer = accelerator.prepare(torch.optim.AdamW(pair.parameters(), lr=1e-3))
    opt = Optimization(accelerator, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
                       max_grad_norm=1.0)
    sampler = generator(pair.policy, tokenizer, 8)
    poisoned = rollout(roles, sampler, tokenizer)
    poisoned.scores[0] = float("nan")
    before = [p.detach().clone() for p in pair.policy.parameters()]
    stats = iteration(roles, opt, poisoned, kl=KLController(0.05), epochs=2)  # 4 mini-batches, each non-finite
    assert stats["train/skipped_step_fraction"] == 1.0
    assert accelerator.scaler.get_scale() < 2.0 ** 10
    assert all(torch.equal(a, b) for a, b in zip(before, pair.policy.parameters()))
    stats = iteration(roles, opt, rollout(roles, sampler, tokenizer), kl=KLController(0.05), epochs=1)
    assert stats["train/skipped_step_fraction"] == 0.0
    assert any(not torch.equal(a, b) for a, b in zip(before, pair.policy.parameters()))


def bf16_roles(tiny, tmp_path: Path) -> None:
    """Without DeepSpeed only the prepared pair's forward is autocast by accelerate: the frozen reference and
    reward model, and generation, run under the same autocast, so at the start the reference's log-probs are
    the policy's exactly (KL 0), and all of them are bf16 computations."""
    tokenizer, policy, scorer = tiny
    policy.save_pretrained(tmp_path / "policy")
    scorer.save_pretrained(tmp_path / "reward")
    tokenizer.save_pretrained(tmp_path / "reward")  # PPO scores with the reward artifact's own tokenizer
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    models, _ = build_models(accelerator, policy_dir=tmp_path / "policy", reward_dir=tmp_path / "reward", lora=None,
                             frozen_models="auto", learning_rate=1e-3, critic_learning_rate=1e-3, betas=(0.9, 0.95),
                             weight_decay=0.0, lr_scheduler="constant", warmup_steps=0, updates=1, max_grad_norm=1.0)
    sampler = Generators(models, accelerator, tokenizer, max_new_tokens=8, temperature=1.0, top_p=1.0).of("policy")
    queries, query_mask = encode_prompts(tokenizer, PROMPTS, max_length=64, device="cpu")
    torch.manual_seed(0)
    responses = sampler.generate(queries, query_mask)
    out = score_answers(models, queries, query_mask, tokenizer=tokenizer, prompts=PROMPTS, responses=responses,
                        temperature=1.0, micro_batch_size=2, max_length=128)
    mask = out["response_mask"].bool()
    assert torch.equal(out["logprobs"][mask], out["ref_logprobs"][mask])  # KL exactly 0 before any update

    ids = torch.cat([queries, responses], 1)
    attention = torch.cat([query_mask, out["response_mask"]], 1)
    with torch.no_grad():  # the same reference in fp32: close, but not what the bf16 run computed
        fp32 = policy_logits(models.reference, ids, attention, prompt_length=queries.shape[1])
    fp32_logprobs = token_logprobs(fp32, responses)[mask]
    assert torch.allclose(fp32_logprobs, out["ref_logprobs"][mask], atol=0.5)
    assert not torch.allclose(fp32_logprobs, out["ref_logprobs"][mask], atol=1e-4)


if __name__ == "__main__":
    check, directory = sys.argv[1], Path(sys.argv[2])
    models = tiny_models(directory)
    {"fp16_loss_scaling": lambda: fp16_loss_scaling(models),
     "bf16_roles": lambda: bf16_roles(models, directory)}[check]()
    print(f"{check}: ok")
