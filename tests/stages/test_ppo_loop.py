"""PPO's rollout and update on tiny random models, in process: scoring equals unpadded forwards, the
trained roles change, the frozen ones never do."""

from __future__ import annotations

import contextlib
import copy
import subprocess
import sys

import pytest
import torch

from stages.common.distribution import token_logprobs
from stages.common.generation import HFGenerator, encode_prompts
from stages.ppo.iteration import IterationSettings, ppo_iteration
from stages.ppo.losses import KLController
from stages.ppo.models import PolicyAndValue, PpoModels, ScalarPerToken, freeze
from stages.ppo.placement import Generators
from stages.ppo.rollout import score_answers
from tests.helpers import REPO
from tests.stages.ppo_helpers import PROMPTS, generator, iteration, optimization, roles_of, rollout, tiny_models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 512-token BPE with our chat template, a random causal LM and a random scalar model on it."""
    return tiny_models(tmp_path_factory.mktemp("corpus"))


def test_the_stages_iteration_samples_scores_and_updates_and_an_adaptive_beta_moves(tiny):
    tokenizer, policy, scorer = tiny
    roles = roles_of(policy, scorer)
    opt = optimization(roles)
    before = [p.detach().clone() for p in roles.trained.policy.parameters()]
    generators = Generators(roles, opt.accelerator, tokenizer, max_new_tokens=10, temperature=1.0, top_p=1.0)
    settings = IterationSettings(max_prompt_length=64, max_chat_length=128, temperature=1.0, top_p=1.0,
                                 rollout_batch_size=len(PROMPTS), mini_batch_size=2, micro_batch_size=2, epochs=1,
                                 clip_range=0.2, value_clip_range=0.2, value_coef=0.1, gamma=1.0, lam=0.95)
    kl = KLController(0.05, target=0.01, horizon=8)  # adaptive: any KL above 0.01 nats raises beta
    torch.manual_seed(0)
    first = ppo_iteration(roles, opt, step=0, prompts=PROMPTS, generators=generators, tokenizer=tokenizer, kl=kl,
                          settings=settings)
    second = ppo_iteration(roles, opt, step=1, prompts=PROMPTS, generators=generators, tokenizer=tokenizer, kl=kl,
                           settings=settings)
    for stats in (first, second):
        assert {"time/sync", "time/generate", "time/score", "time/train", "time/iteration"} <= set(stats)
    assert first["kl/mean"] == pytest.approx(0.0, abs=1e-5)  # the first rollout: the policy is the reference
    assert second["kl/mean"] > 0.01 and kl.value > second["kl/beta"]  # moved away, so beta rose after it
    assert not all(torch.equal(a, b) for a, b in zip(before, roles.trained.policy.parameters()))


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
    out = score_answers(roles, queries, query_mask, tokenizer=tokenizer, prompts=PROMPTS, responses=responses,
                        temperature=0.7, micro_batch_size=3, max_length=128)
    assert out["response_mask"][0].tolist()[:4] == [1, 1, 1, 0]

    scorer.eval()
    for row in range(len(PROMPTS)):
        prompt = queries[row][query_mask[row].bool()]
        answer = responses[row][out["response_mask"][row].bool()]
        ids = torch.cat([prompt, answer]).unsqueeze(0)
        text = tokenizer.decode(answer, skip_special_tokens=True).strip()
        chat = tokenizer.apply_chat_template(PROMPTS[row] + [{"role": "assistant", "content": text}], tokenize=False,
                                             return_tensors=None)
        with torch.no_grad():
            # the reward model as plain transformers scores the rendered chat, unpadded
            alone = scorer(**tokenizer(chat, return_tensors="pt", add_special_tokens=False)).logits[0, 0]
            logits = policy(input_ids=ids).logits[0, len(prompt) - 1 : -1] / 0.7
        assert out["scores"][row].item() == pytest.approx(alone.item(), abs=1e-5)
        n = len(answer)
        expected = token_logprobs(logits.unsqueeze(0), answer.unsqueeze(0))[0]
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
        stats = iteration(roles, opt, rollout(roles, sampler, tokenizer), kl=kl, epochs=2)
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
                  freeze(copy.deepcopy(scorer)))
    assert not list(roles.reference.parameters())  # no second copy of the weights
    trainable = [p for p in peft_policy.parameters() if p.requires_grad]
    assert 0 < sum(p.numel() for p in trainable) < sum(p.numel() for p in policy.parameters()) / 4
    opt = optimization(roles, policy_lr=1e-2)
    trajectory = rollout(roles, generator(peft_policy, tokenizer, 10), tokenizer)
    iteration(roles, opt, trajectory, kl=KLController(0.05))

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
    stats = iteration(roles, opt, trajectory, kl=KLController(0.05))
    assert stats["train/skipped_step_fraction"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, roles.trained.policy.parameters()))
    assert all(torch.isfinite(p).all() for p in roles.trained.value.parameters())


@pytest.mark.parametrize("check", ["fp16_loss_scaling", "bf16_roles"])
def test_mixed_precision(check, tmp_path):
    """tests/stages/precision_checks.py, in a fresh process each: accelerate's state (its mixed precision) is
    set once per process."""
    result = subprocess.run([sys.executable, "-m", "tests.stages.precision_checks", check, str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{check}: ok" in result.stdout


def test_sampling_ignores_generation_settings_saved_with_the_model(tiny):
    """A repetition penalty or top-k saved in a checkpoint's generation config would change the sampling policy
    behind PPO's log-probs: the generator builds its whole config from the stage's own settings."""
    tokenizer, policy, _ = tiny
    queries, query_mask = encode_prompts(tokenizer, PROMPTS, max_length=64, device="cpu")
    plain = copy.deepcopy(policy)
    shipped = copy.deepcopy(policy)
    shipped.generation_config.repetition_penalty = 5.0
    shipped.generation_config.top_k = 2
    shipped.generation_config.no_repeat_ngram_size = 1
    samples = []
    for model in (plain, shipped):
        torch.manual_seed(3)
        samples.append(generator(model, tokenizer, 12).generate(queries, query_mask))
    assert torch.equal(samples[0], samples[1])


def test_with_top_p_the_log_probs_are_those_of_the_truncated_distribution_that_was_sampled(tiny):
    from transformers import TopPLogitsWarper

    tokenizer, policy, scorer = tiny
    roles = roles_of(policy, scorer)
    queries, query_mask = encode_prompts(tokenizer, PROMPTS, max_length=64, device="cpu")
    sampler = HFGenerator(lambda: contextlib.nullcontext(roles.trained.policy), tokenizer, max_new_tokens=10,
                          temperature=0.8, top_p=0.5)
    torch.manual_seed(0)
    responses = sampler.generate(queries, query_mask)
    out = score_answers(roles, queries, query_mask, tokenizer=tokenizer, prompts=PROMPTS, responses=responses,
                        temperature=0.8, top_p=0.5, micro_batch_size=4, max_length=128)
    mask = out["response_mask"].bool()
    ids = torch.cat([queries, responses], 1)
    with torch.no_grad():
        logits = policy(input_ids=ids, attention_mask=torch.cat([query_mask, out["response_mask"]], 1),
                        position_ids=(torch.cat([query_mask, out["response_mask"]], 1).cumsum(-1) - 1).clamp(min=0)
                        ).logits[:, queries.shape[1] - 1 : -1] / 0.8
    full = token_logprobs(logits, responses)
    nucleus = TopPLogitsWarper(0.5)(None, logits.reshape(-1, logits.shape[-1])).view_as(logits)
    truncated = token_logprobs(nucleus, responses)
    assert torch.isfinite(truncated[mask]).all()  # every sampled token is inside its nucleus
    assert torch.allclose(out["logprobs"][mask], truncated[mask], atol=1e-5)
    assert (out["logprobs"][mask] > full[mask] + 1e-4).any()  # renormalised over the nucleus: not the full log-prob
    # the reference's distribution is built as the policy's: with the same weights the KL is exactly 0
    assert torch.allclose(out["ref_logprobs"][mask], truncated[mask], atol=1e-5)
    assert torch.equal(out["ref_logprobs"][mask], out["logprobs"][mask])


def test_generation_in_batches_pads_each_batch_of_answers_to_one_width(tiny):
    tokenizer, policy, _ = tiny
    queries, query_mask = encode_prompts(tokenizer, PROMPTS, max_length=64, device="cpu")
    settings = dict(max_new_tokens=10, temperature=1.0, top_p=1.0, sample=False)
    whole = HFGenerator(lambda: contextlib.nullcontext(policy), tokenizer, **settings)
    batched = HFGenerator(lambda: contextlib.nullcontext(policy), tokenizer, batch_size=2, **settings)
    halves = [whole.generate(queries[part], query_mask[part]) for part in (slice(0, 2), slice(2, 4))]
    out = batched.generate(queries, query_mask)
    assert out.shape == (4, max(h.shape[1] for h in halves))
    for rows, half in zip((slice(0, 2), slice(2, 4)), halves):
        assert torch.equal(out[rows, : half.shape[1]], half)
        assert (out[rows, half.shape[1]:] == tokenizer.pad_token_id).all()


def test_activation_checkpointing_and_offloaded_frozen_models_train_the_pair_to_the_same_weights(tiny, tmp_path):
    """Both trade time for memory and must not change what is learned. (On this CPU-only machine the
    offloaded models' host memory is the device: it checks the wiring, not the transfers.)"""
    from accelerate import Accelerator

    from stages.ppo.placement import build_models

    tokenizer, policy, scorer = tiny
    policy.save_pretrained(tmp_path / "policy")
    scorer.save_pretrained(tmp_path / "reward")
    tokenizer.save_pretrained(tmp_path / "reward")  # PPO scores with the reward artifact's own tokenizer
    torch.manual_seed(5)
    trajectory = rollout(roles_of(policy, scorer), generator(policy, tokenizer, 8), tokenizer)
    trained, layer_forwards = [], []
    for saving in (False, True):
        models, opt = build_models(Accelerator(cpu=True), policy_dir=tmp_path / "policy", reward_dir=tmp_path / "reward",
                                   lora=None, frozen_models="auto", offload_frozen=saving, learning_rate=1e-3,
                                   critic_learning_rate=1e-3, betas=(0.9, 0.95), weight_decay=0.0,
                                   lr_scheduler="constant", warmup_steps=0, updates=4, max_grad_norm=1.0,
                                   activation_checkpointing=saving)
        assert models.trained.policy.is_activation_checkpointing == saving
        assert (models.frozen_in_use is not contextlib.nullcontext) == saving
        with models.frozen_in_use():
            rescored = rollout(models, generator(models.trained.policy, tokenizer, 8), tokenizer)
        assert torch.isfinite(rescored.scores).all()
        torch.manual_seed(6)
        calls = []  # early in the layer: the recompute stops once backward has what it needs
        hook = models.trained.policy.model.layers[0].self_attn.q_proj.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        iteration(models, opt, trajectory, kl=KLController(0.05), epochs=1)
        hook.remove()
        layer_forwards.append(len(calls))
        trained.append([p.detach().clone() for p in models.trained.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*trained))
    # backward recomputed the checkpointed layers (issue 23.5: in eval mode transformers never did)
    assert layer_forwards[1] > layer_forwards[0] > 0
    assert any(not torch.equal(a, p) for a, p in zip(trained[0], policy.parameters()))  # it did train
