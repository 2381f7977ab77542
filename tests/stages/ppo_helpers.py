"""What the PPO loop tests share: tiny random models on a real tokenizer, the four roles built from them, and
one rollout and update as the stage runs them."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from stages.common.chat import DEFAULT_CHAT_TEMPLATE
from stages.common.generation import HFGenerator, encode_prompts
from stages.ppo.iteration import IterationSettings, update_on_rollout
from stages.ppo.losses import KLController
from stages.ppo.models import PolicyAndValue, PpoModels, ScalarPerToken, freeze
from stages.ppo.rollout import score_rollout
from stages.ppo.update import Optimization
from stages.pretrain.stage import train_tokenizer
from tests.helpers import small_corpus

PROMPTS = [[{"role": "user", "content": text}] for text in
           ("What is a rose?", "Who wrote Persuasion, and when was it published?", "Why?", "Tell me about Bath.")]


def tiny_models(directory: Path, *, chat_template: str = DEFAULT_CHAT_TEMPLATE, pad_is_eos: bool = False):
    """A 512-token BPE with a chat template (ours by default), a random causal LM and a random scalar model
    on it; with `pad_is_eos`, the tokenizer pads with its EOS, as SmolLM2's does."""
    corpus = small_corpus(directory).read_text().split("\n\n")
    tokenizer = train_tokenizer(corpus, 512, 2)
    tokenizer.chat_template = chat_template
    if pad_is_eos:
        tokenizer.pad_token = tokenizer.eos_token
    config = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(LlamaConfig(**config))
    scorer = LlamaForSequenceClassification(LlamaConfig(num_labels=1, **config))
    return tokenizer, policy, scorer


def roles_of(policy, scorer) -> PpoModels:
    """The four roles from copies of the tiny models: the policy and critic trained, reference and reward frozen."""
    return PpoModels(PolicyAndValue(copy.deepcopy(policy), ScalarPerToken(copy.deepcopy(scorer))),
                     freeze(copy.deepcopy(policy)), freeze(copy.deepcopy(scorer)))


def optimization(roles: PpoModels, policy_lr: float = 1e-3) -> Optimization:
    """AdamW on the trainable policy weights and on the value model, constant rates, CPU accelerator."""
    pair = roles.trained
    optimizer = torch.optim.AdamW([{"params": [p for p in pair.policy.parameters() if p.requires_grad], "lr": policy_lr},
                                   {"params": list(pair.value.parameters()), "lr": 1e-3}])
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return Optimization(Accelerator(cpu=True), optimizer, constant, max_grad_norm=1.0)


def generator(model, tokenizer, max_new_tokens: int) -> HFGenerator:
    """Sampling at temperature 1 from `model` as it is."""
    return HFGenerator(lambda: contextlib.nullcontext(model), tokenizer, max_new_tokens=max_new_tokens,
                       temperature=1.0, top_p=1.0)


def rollout(roles: PpoModels, sampler: HFGenerator, tokenizer):
    """One rollout of the four test prompts: sampled, then scored by every role."""
    queries, query_mask = encode_prompts(tokenizer, PROMPTS, max_length=64, device="cpu")
    responses = sampler.generate(queries, query_mask)
    return score_rollout(roles, queries, query_mask, tokenizer=tokenizer, prompts=PROMPTS, responses=responses,
                         temperature=1.0, micro_batch_size=2, max_length=128)


def iteration(roles: PpoModels, opt: Optimization, trajectory, *, kl: KLController, epochs: int = 4) -> dict:
    """The stage's own update of one rollout (update_on_rollout): advantages, `epochs` passes in mini-batches
    of 2, rollout stats, beta moved."""
    settings = IterationSettings(max_prompt_length=64, max_chat_length=128, temperature=1.0, top_p=1.0,
                                 rollout_batch_size=len(PROMPTS), mini_batch_size=2, micro_batch_size=2, epochs=epochs,
                                 clip_range=0.2, value_clip_range=0.2, value_coef=0.1, gamma=1.0, lam=0.95)
    return update_on_rollout(roles, opt, trajectory, kl=kl, settings=settings, eos_token_id=0)


