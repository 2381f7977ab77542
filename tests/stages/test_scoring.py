"""One scoring function for every stage: the reward stage's training forward, PPO's rollout scores and plain
`AutoModelForSequenceClassification` on the chat template's full text agree, also for a tokenizer whose
pad token is its EOS and whose template adds text after EOS (as SmolLM2's ChatML does)."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
)

from stages.common.generation import HFGenerator, encode_prompts
from stages.ppo.models import PolicyAndValue, PpoModels, ScalarPerToken, freeze
from stages.ppo.rollout import score_answers
from stages.reward.stage import RankingCollator, tokenize_rankings
from tests.stages.ppo_helpers import tiny_models

# ChatML-like: EOS closes every turn and a newline follows it, as in SmolLM2's template
CHATML = ("{%- for message in messages -%}{{ '<|bos|>' + message['role'] + '\n' + message['content'] + eos_token + '\n' }}"
          "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|bos|>assistant\n' }}{%- endif -%}")
PROMPTS = [[{"role": "user", "content": "What is a rose?"}], [{"role": "user", "content": "Who wrote Persuasion?"}]]
ANSWERS = ["A flower with thorns.", "Jane Austen, in 1817."]


@pytest.fixture(scope="module")
def pad_is_eos(tmp_path_factory):
    """A tokenizer with pad = EOS and text after EOS, a random causal LM and a saved random reward model."""
    directory = tmp_path_factory.mktemp("pad-is-eos")
    tokenizer, policy, scorer = tiny_models(directory, chat_template=CHATML, pad_is_eos=True)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == policy.config.pad_token_id
    scorer.save_pretrained(directory / "reward")
    tokenizer.save_pretrained(directory / "reward")
    reward = AutoModelForSequenceClassification.from_pretrained(directory / "reward").eval()
    return tokenizer, policy, reward


def plain_scores(reward, tokenizer) -> list[float]:
    """What a user's own script gets: the template's full text, one chat at a time, no padding."""
    scores = []
    for prompt, answer in zip(PROMPTS, ANSWERS):
        text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
        assert text.endswith(tokenizer.eos_token + "\n")
        with torch.no_grad():
            scores.append(reward(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item())
    return scores


def test_the_reward_stage_scores_what_plain_transformers_scores(pad_is_eos):
    tokenizer, _, reward = pad_is_eos
    rows = [{"prompt": PROMPTS[0], "answers": ANSWERS, "ranks": [1, 2]}]
    batch = RankingCollator(tokenizer.pad_token_id)(tokenize_rankings(rows, tokenizer, max_length=128))
    with torch.no_grad():  # the forward of the reward stage's training and evaluation
        trained_on = reward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    expected = [plain_scores(reward, tokenizer)[0]]
    text = tokenizer.apply_chat_template(PROMPTS[0] + [{"role": "assistant", "content": ANSWERS[1]}], tokenize=False)
    with torch.no_grad():
        expected.append(reward(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item())
    assert trained_on.tolist() == pytest.approx(expected, abs=1e-5)


def test_ppo_scores_its_answers_as_the_reward_stage_and_plain_transformers_do(pad_is_eos):
    tokenizer, policy, reward = pad_is_eos
    models = PpoModels(PolicyAndValue(policy, ScalarPerToken(reward)), freeze(policy), freeze(reward))
    queries, query_mask = encode_prompts(tokenizer, PROMPTS, max_length=64, device="cpu")
    # the answers as the policy would have sampled them: their tokens, EOS, then padding (= EOS here)
    answers = [tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a in ANSWERS]
    width = max(map(len, answers)) + 2
    responses = torch.tensor([a + [tokenizer.pad_token_id] * (width - len(a)) for a in answers])
    out = score_answers(models, queries, query_mask, tokenizer=tokenizer, prompts=PROMPTS, responses=responses,
                        temperature=1.0, micro_batch_size=2, max_length=128)
    assert out["response_mask"].sum(1).tolist() == [len(a) for a in answers]
    assert out["scores"].tolist() == pytest.approx(plain_scores(reward, tokenizer), abs=1e-5)

    # reading the per-token scores at each answer's EOS, as PPO did before, gives other numbers here
    ids = torch.cat([queries, responses], 1)
    with torch.no_grad():
        per_token = ScalarPerToken(reward)(ids, torch.cat([query_mask, out["response_mask"]], 1))
    at_eos = [per_token[row, queries.shape[1] + len(a) - 1].item() for row, a in enumerate(answers)]
    assert at_eos != pytest.approx(plain_scores(reward, tokenizer), abs=1e-3)


def test_sampling_with_pad_equal_to_eos_stops_and_scores(pad_is_eos):
    tokenizer, policy, reward = pad_is_eos
    models = PpoModels(PolicyAndValue(policy, ScalarPerToken(reward)), freeze(policy), freeze(reward))
    queries, query_mask = encode_prompts(tokenizer, PROMPTS, max_length=64, device="cpu")
    sampler = HFGenerator(lambda: contextlib.nullcontext(policy), tokenizer, max_new_tokens=8, temperature=1.0,
                          top_p=1.0)
    torch.manual_seed(0)
    responses = sampler.generate(queries, query_mask)
    out = score_answers(models, queries, query_mask, tokenizer=tokenizer, prompts=PROMPTS, responses=responses,
                        temperature=1.0, micro_batch_size=2, max_length=128)
    assert torch.isfinite(out["scores"]).all() and out["scores"].shape == (2,)


def test_ppo_scores_with_the_reward_models_own_template_when_the_policy_uses_another(pad_is_eos):
    # a reward stage trained on ChatML while the SFT stage set another chat_template: PPO fed it the policy's
    # `### User:`-style text (issue 23.3); it renders the chat with the reward artifact's own template
    reward_tokenizer, policy, reward = pad_is_eos
    policy_tokenizer = copy.deepcopy(reward_tokenizer)
    policy_tokenizer.chat_template = ("{%- for m in messages -%}{{ '### ' + m['role'] + ': ' + m['content'] + eos_token }}"
                                      "{%- endfor -%}{%- if add_generation_prompt -%}{{ '### assistant: ' }}{%- endif -%}")
    models = PpoModels(PolicyAndValue(policy, ScalarPerToken(reward)), freeze(policy), freeze(reward),
                       reward_tokenizer=reward_tokenizer)
    queries, query_mask = encode_prompts(policy_tokenizer, PROMPTS, max_length=64, device="cpu")
    answers = [policy_tokenizer(a, add_special_tokens=False)["input_ids"] + [policy_tokenizer.eos_token_id] for a in ANSWERS]
    width = max(map(len, answers))
    responses = torch.tensor([a + [policy_tokenizer.pad_token_id] * (width - len(a)) for a in answers])
    out = score_answers(models, queries, query_mask, tokenizer=policy_tokenizer, prompts=PROMPTS, responses=responses,
                        temperature=1.0, micro_batch_size=2, max_length=128)
    assert out["scores"].tolist() == pytest.approx(plain_scores(reward, reward_tokenizer), abs=1e-5)


def test_eval_refuses_a_policy_whose_chat_template_differs_from_the_references(pad_is_eos, tmp_path):
    from core.errors import InputError
    from stages.common.hf_models import Loading
    from stages.eval.stage import check_same_chat_tokenizer

    tokenizer, _, _ = pad_is_eos
    tokenizer.save_pretrained(tmp_path / "same")
    check_same_chat_tokenizer(tokenizer, tmp_path / "same", name="sft", loading=Loading())
    other = copy.deepcopy(tokenizer)
    other.chat_template = "{%- for m in messages -%}{{ m['content'] + eos_token }}{%- endfor -%}"
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(InputError, match=r"inputs.policies.dpo .*its chat template differs from the reference's"):
        check_same_chat_tokenizer(tokenizer, tmp_path / "other", name="dpo", loading=Loading())
