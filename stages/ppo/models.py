"""PPO's four roles, built in one place, and the forward passes that read them.

- policy (trained): the SFT causal LM;
- reference (frozen): a copy of the initial policy, for the KL penalty;
- reward (frozen): the reward stage's sequence classifier, scoring the rendered chat (stages.common.scoring);
- value (trained): initialised from the reward model (InstructGPT), read at every answer token.

The two trained roles live in one module (`PolicyAndValue`) with one optimizer: accelerate gives DeepSpeed
one model per engine, and DDP wants one forward per backward (the PPO-ptx term included).

Sequences are [left-padded prompt | right-padded answer]; position ids are counted from the first real
token, as `generate` does, so every forward sees the positions the model was trained with.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, ContextManager, NamedTuple

import torch
from peft import get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from stages.common.distribution import position_ids
from stages.common.hf_models import DEFAULT_LOADING, Loading, keep_one_layout


class LoadedRoles(NamedTuple):
    """The four roles as loaded, before they are placed for this launch (placement.build_models)."""

    policy: nn.Module
    reference: nn.Module
    reward: nn.Module
    value: nn.Module


class PpoModels(NamedTuple):
    """The four roles as training uses them: `trained` holds the policy and the value (the prepared
    PolicyAndValue: plain, DDP or a DeepSpeed engine); `reference` and `reward` are frozen (plain modules or
    DeepSpeed inference engines). `autocast` is the mixed precision the frozen roles run under: the one
    accelerate gives the trained pair's forward, so that with the same weights the reference computes
    exactly the policy's log-probs (a KL of 0 at the start) in any precision. The frozen roles are on the
    device within `frozen_in_use()` (outside it they may be offloaded to host memory). `reward_tokenizer` is
    the reward artifact's own tokenizer and chat template, which it was trained to read (None: the policy's,
    for models built on one tokenizer)."""

    trained: nn.Module
    reference: nn.Module
    reward: nn.Module
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    frozen_in_use: Callable[[], ContextManager] = contextlib.nullcontext
    reward_tokenizer: Any = None


class PolicyAndValue(nn.Module):
    """The policy and the critic as one module: one forward gives the policy's logits and the critic's values
    for the same sequences, and optionally the PPO-ptx language-modelling loss on a batch of text."""

    def __init__(self, policy: nn.Module, value: nn.Module):
        super().__init__()
        self.policy = policy
        self.value = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, ptx_input_ids: torch.Tensor | None = None,
                *, logits_to_keep: int = 0):
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                             use_cache=False, logits_to_keep=logits_to_keep).logits
        values = self.value(input_ids, attention_mask)
        ptx_loss = None
        if ptx_input_ids is not None:
            ptx_loss = self.policy(input_ids=ptx_input_ids, labels=ptx_input_ids, use_cache=False).loss
        return logits, values, ptx_loss


class ScalarPerToken(nn.Module):
    """A sequence-classification model (backbone + `score` head) read at every position: [B, T] scalars."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        backbone = self.classifier.base_model
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids(attention_mask), use_cache=False).last_hidden_state
        return self.classifier.score(hidden).squeeze(-1).float()


class AdapterDisabled(nn.Module):
    """The reference role of a LoRA policy: the same module with its adapter switched off, so the frozen
    SFT weights are not held twice. The policy is kept outside this module's parameters."""

    def __init__(self, peft_policy: nn.Module):
        super().__init__()
        object.__setattr__(self, "policy", peft_policy)  # not a submodule: its parameters stay the policy's

    def forward(self, **kwargs):
        with torch.no_grad(), self.policy.disable_adapter():
            return self.policy(**kwargs)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no gradients: a frozen role never gets optimizer state."""
    model.eval()
    model.requires_grad_(False)
    return model


def load_roles(policy_dir: Path, reward_dir: Path, *, lora=None, frozen_context=None,
               loading: Loading = DEFAULT_LOADING) -> LoadedRoles:
    """The four roles from the SFT and reward artifacts (float32 master weights; autocast does the rest).
    With `lora` (a peft LoraConfig) the policy trains an adapter and the reference is the adapter switched off.
    The frozen models are loaded inside `frozen_context` (see placement.frozen_context)."""
    policy = keep_one_layout(AutoModelForCausalLM.from_pretrained(policy_dir, **loading.trained_model_kwargs()))
    if lora is not None:
        policy = get_peft_model(policy, lora)
    with frozen_context or contextlib.nullcontext():
        if lora is not None:
            reference = AdapterDisabled(policy)
        else:
            reference = freeze(AutoModelForCausalLM.from_pretrained(policy_dir, **loading.model_kwargs()))
        reward = freeze(AutoModelForSequenceClassification.from_pretrained(reward_dir, **loading.model_kwargs()))
    value = ScalarPerToken(AutoModelForSequenceClassification.from_pretrained(reward_dir, **loading.model_kwargs()))
    policy.config.use_cache = False  # training forwards; generate() asks for the cache explicitly
    return LoadedRoles(policy, reference, reward, value)


def trained_outputs(trained: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, prompt_length: int,
                    ptx_input_ids: torch.Tensor | None = None):
    """(the policy's logits [B, R, V] at the positions that predicted the answer tokens, in the model's dtype;
    the values before each answer token [B, R]; the ptx loss or None) of the trained pair. The LM head runs
    on the answer positions only (`logits_to_keep`)."""
    answer_length = input_ids.shape[1] - prompt_length
    logits, values, ptx_loss = trained(input_ids, attention_mask, ptx_input_ids, logits_to_keep=answer_length + 1)
    return logits[:, :-1], values[:, prompt_length - 1 : -1], ptx_loss
