"""PPO's rollout and update on tiny random models, in process: scoring equals unpadded forwards, the
trained roles change, the frozen ones never do."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from stages.common.chat import DEFAULT_CHAT_TEMPLATE
from stages.ppo.losses import KLController, logprobs_of
from stages.ppo.models import PolicyAndValue, PpoModels, ScalarPerToken, freeze
from stages.ppo.rollout import HFGenerator, encode_prompts, score_answers, score_rollout
from stages.ppo.update import Optimization, advantages_and_returns, ppo_epochs, rollout_stats
from tests.helpers import small_corpus

PROMPTS = [[{"role": "user", "content": text}] for text in
           ("What is a rose?", "Who wrote Persuasion, and when was it published?", "Why?", "Tell me about Bath.")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 512-token BPE with our chat template, a random causal LM and a random scalar model on it."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from stages.pretrain.stage import train_tokenizer

    corpus = small_corpus(tmp_path_factory.mktemp("corpus")).read_text().split("\n\n")
    tokenizer = train_tokenizer(corpus, 512, 2)
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    config = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(LlamaConfig(**config))
    scorer = LlamaForSequenceClassification(LlamaConfig(num_labels=1, **config))
    return tokenizer, policy, scorer


def roles_of(policy, scorer) -> PpoModels:
    return PpoModels(PolicyAndValue(copy.deepcopy(policy), ScalarPerToken(copy.deepcopy(scorer))),
                 freeze(copy.deepcopy(policy)), freeze(ScalarPerToken(copy.deepcopy(scorer))))


def optimization(roles: PpoModels, policy_lr: float = 1e-3) -> Optimization:
    """AdamW on the trainable policy weights and on the value model, constant rates, CPU accelerator."""
    from accelerate import Accelerator

    pair = roles.trained
    optimizer = torch.optim.AdamW([{"params": [p for p in pair.policy.parameters() if p.requires_grad], "lr": policy_lr},
                                   {"params": list(pair.value.parameters()), "lr": 1e-3}])
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return Optimization(Accelerator(cpu=True), optimizer, constant, max_grad_norm=1.0)


def generator(model, tokenizer, max_new_tokens: int) -> HFGenerator:
    return HFGenerator(lambda: contextlib.nullcontext(model), tokenizer, max_new_tokens=max_new_tokens,
                       temperature=1.0, top_p=1.0)


def rollout(roles: PpoModels, sampler: HFGenerator, tokenizer):
    """One rollout of the four test prompts: sampled, then scored by every role."""
    queries, query_mask = encode_prompts(tokenizer, PROMPTS, max_length=64, device="cpu")
    responses = sampler.generate(queries, query_mask)
    return score_rollout(roles, queries, query_mask, responses=responses, eos_token_id=tokenizer.eos_token_id,
                         temperature=1.0, micro_batch_size=2)


def iteration(roles: PpoModels, opt: Optimization, trajectory, kl: KLController, epochs: int = 4) -> dict:
    """The stage's update of one rollout: advantages, `epochs` passes in mini-batches of 2, rollout stats."""
    targets = advantages_and_returns(trajectory, beta=kl.value, gamma=1.0, lam=0.95, whiten=True)
    stats = ppo_epochs(roles.trained, opt, trajectory, targets, epochs=epochs, mini_batch_size=2, micro_batch_size=2,
                       clip_range=0.2, value_clip_range=0.2, value_coef=0.1, temperature=1.0)
    return {**stats, **rollout_stats(opt.accelerator, trajectory, targets, eos_token_id=0)}


def test_padded_batch_scores_equal_each_answer_scored_alone(tiny):
    tokenizer, policy, scorer = tiny
    roles = roles_of(policy, scorer)
    torch.manual_seed(1)
    queries, query_mask = encode_prompts(tokenizer, PROMPTS, max_length=64, device="cpu")
    assert (query_mask[:, 0] == 0).any() and (query_mask[:, -1] == 1).all()  # left padding
    responses = generator(roles.trained.policy, tokenizer, 12).generate(queries, query_mask)
    eos = tokenizer.eos_token_id
    responses[0, 3:] = tokenizer.pad_token_id  # force one short answer ending in EOS, then padding
    responses[0, 2] = eos
    out = score_answers(roles, queries, query_mask, responses=responses, eos_token_id=eos, temperature=0.7,
                        micro_batch_size=3)
    assert out["response_mask"][0].tolist()[:4] == [1, 1, 1, 0]

    scorer.eval()
    for row in range(len(PROMPTS)):
        prompt = queries[row][query_mask[row].bool()]
        answer = responses[row][out["response_mask"][row].bool()]
        ids = torch.cat([prompt, answer]).unsqueeze(0)
        with torch.no_grad():
            # the reward model's own head at the last token, as transformers scores an unpadded sequence
            alone = scorer(input_ids=ids).logits[0, 0]
            logits = policy(input_ids=ids).logits[0, len(prompt) - 1 : -1] / 0.7
        assert out["scores"][row].item() == pytest.approx(alone.item(), abs=1e-5)
        n = len(answer)
        expected = logprobs_of(logits.unsqueeze(0), answer.unsqueeze(0))[0]
        assert torch.allclose(out["logprobs"][row, :n], expected, atol=1e-5)
        assert torch.allclose(out["ref_logprobs"][row, :n], expected, atol=1e-5)  # reference = initial policy


def test_iterations_train_policy_and_value_and_leave_frozen_roles_untouched(tiny):
    tokenizer, policy, scorer = tiny
    roles = roles_of(policy, scorer)
    frozen = {name: [p.detach().clone() for p in getattr(roles, name).parameters()] for name in ("reference", "reward")}
    trained = {name: [p.detach().clone() for p in getattr(roles.trained, name).parameters()] for name in ("policy", "value")}
    assert not any(p.requires_grad for name in frozen for p in getattr(roles, name).parameters())

    opt = optimization(roles)
    kl = KLController(0.05)
    sampler = generator(roles.trained.policy, tokenizer, 10)
    for _ in range(2):
        stats = iteration(roles, opt, rollout(roles, sampler, tokenizer), kl, epochs=2)
    for key in ("policy/loss", "value/loss", "policy/clip_fraction", "policy/approx_kl", "policy/entropy",
                "score/mean", "kl/mean", "response/length"):
        assert key in stats and stats[key] == stats[key], key  # present and not NaN
    assert stats["kl/mean"] != 0.0  # the policy moved away from the reference between the two rollouts

    for name, before in frozen.items():
        assert all(torch.equal(a, b) for a, b in zip(before, getattr(roles, name).parameters())), name
    for name, before in trained.items():
        assert any(not torch.equal(a, b) for a, b in zip(before, getattr(roles.trained, name).parameters())), name
    optimized = {id(p) for group in opt.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for name in frozen for p in getattr(roles, name).parameters()}


def test_with_lora_the_reference_is_the_policy_with_its_adapter_off(tiny):
    from peft import LoraConfig, get_peft_model

    from stages.ppo.models import AdapterDisabled

    tokenizer, policy, scorer = tiny
    peft_policy = get_peft_model(copy.deepcopy(policy), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                                   task_type="CAUSAL_LM"))
    roles = PpoModels(PolicyAndValue(peft_policy, ScalarPerToken(copy.deepcopy(scorer))), AdapterDisabled(peft_policy),
                  freeze(ScalarPerToken(copy.deepcopy(scorer))))
    assert not list(roles.reference.parameters())  # no second copy of the weights
    trainable = [p for p in peft_policy.parameters() if p.requires_grad]
    assert 0 < sum(p.numel() for p in trainable) < sum(p.numel() for p in policy.parameters()) / 4
    opt = optimization(roles, policy_lr=1e-2)
    trajectory = rollout(roles, generator(peft_policy, tokenizer, 10), tokenizer)
    iteration(roles, opt, trajectory, KLController(0.05))

    ids = torch.cat([trajectory.queries, trajectory.responses], 1)
    with torch.no_grad():
        base = policy(input_ids=ids).logits
        reference = roles.reference(input_ids=ids).logits
        trained = peft_policy(input_ids=ids).logits
    assert torch.allclose(reference, base, atol=1e-5)  # adapter off = the untouched SFT weights
    assert not torch.allclose(trained, base, atol=1e-4)  # adapter on = the policy PPO trained


def test_a_non_finite_gradient_skips_the_step_instead_of_poisoning_the_weights(tiny):
    tokenizer, policy, scorer = tiny
    roles = roles_of(policy, scorer)
    before = [p.detach().clone() for p in roles.trained.policy.parameters()]
    opt = optimization(roles)
    trajectory = rollout(roles, generator(roles.trained.policy, tokenizer, 8), tokenizer)
    trajectory.scores[0] = float("nan")  # e.g. an overflow upstream: the whole batch's advantages turn NaN
    stats = iteration(roles, opt, trajectory, KLController(0.05))
    assert stats["train/skipped_step_fraction"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, roles.trained.policy.parameters()))
    assert all(torch.isfinite(p).all() for p in roles.trained.value.parameters())
