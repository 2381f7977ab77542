"""`HFGenerator` samples with the stages' own nucleus (stages/common/nucleus.py) in place of transformers'
TopPLogitsWarper: the same draws as `generate`'s own temperature and top-p for the same seed, where no
logits tie at the nucleus edge."""

from __future__ import annotations

import contextlib

import torch
from transformers import GenerationConfig

from stages.common.generation import HFGenerator, encode_prompts
from tests.stages.ppo_helpers import tiny_models

PROMPTS = [[{"role": "user", "content": "What is a rose?"}], [{"role": "user", "content": "Who wrote Persuasion?"}],
           [{"role": "user", "content": "Name a river."}], [{"role": "user", "content": "Say hello."}]]


def draws(model, tokenizer, prompts, *, temperature: float, top_p: float, new_tokens: int, seed: int = 0):
    """(ours, transformers'): answers of HFGenerator and of plain `generate` with its own warpers, one seed."""
    queries, mask = encode_prompts(tokenizer, prompts, max_length=64, device="cpu")
    sampler = HFGenerator(lambda: contextlib.nullcontext(model), tokenizer, max_new_tokens=new_tokens,
                          temperature=temperature, top_p=top_p)
    torch.manual_seed(seed)
    ours = sampler.generate(queries, mask)
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    with torch.no_grad():
        theirs = model.generate(input_ids=queries, attention_mask=mask, generation_config=config)[:, queries.shape[1]:]
    return ours, theirs


def test_sampling_draws_what_generates_own_temperature_and_top_p_draw(tmp_path):
    tokenizer, policy, _ = tiny_models(tmp_path)
    policy.eval()
    ours, theirs = draws(policy, tokenizer, PROMPTS, temperature=0.7, top_p=0.8, new_tokens=12)
    assert torch.equal(ours, theirs)
    # and both settings changed the draw: neither is silently left out
    untruncated, _ = draws(policy, tokenizer, PROMPTS, temperature=0.7, top_p=1.0, new_tokens=12)
    unscaled, _ = draws(policy, tokenizer, PROMPTS, temperature=1.0, top_p=0.8, new_tokens=12)
    assert not torch.equal(ours, untruncated) and not torch.equal(ours, unscaled)
