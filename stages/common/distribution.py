"""The distribution each answer token was sampled from, and its per-token statistics, computed in chunks.

A policy's logits arrive in the model's dtype, [B, R, V] over the answer positions. Turning them into log-probs
and entropies needs fp32 over the whole vocabulary: with a 150k vocabulary, 4 answers of 512 tokens, one
such copy is 1.2 GB, and top-p sorting and `log_softmax` make several. Here at most `CHUNK_POSITIONS`
positions are in fp32 at a time; under autograd each chunk is checkpointed, so backward recomputes its
fp32 softmax instead of keeping it (only the incoming logits are held, as they are anyway).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import TopPLogitsWarper

#: positions whose full-vocabulary fp32 rows exist at once: 128 × 150k × 4 B = 77 MB
CHUNK_POSITIONS = 128

#: the logit top-p gives the tokens outside the nucleus: finite (a masked log-prob stays finite in the loss)
#: and low enough that its probability is exactly 0
REMOVED_LOGIT = -1e9


def sampling_logits(logits: torch.Tensor, *, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """fp32 logits of the distribution `generate` samples from: scaled by the temperature and, with `top_p` < 1,
    truncated to the nucleus by transformers' own TopPLogitsWarper (what `generate` applies after the
    temperature). `logits` is [N, V] or [B, T, V]."""
    scaled = logits.float() / temperature
    if top_p >= 1.0:
        return scaled
    flat = scaled.reshape(-1, scaled.shape[-1])
    return TopPLogitsWarper(top_p, filter_value=REMOVED_LOGIT)(None, flat).view_as(scaled)


def nucleus_with_token(logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float, top_p: float) -> torch.Tensor:
    """fp32 sampling logits (`sampling_logits`) with each position's `tokens` [N] or [B, T] kept in the nucleus.

    The nucleus is rebuilt from a second forward, not the one `generate` sampled from; in bf16/fp16 its
    boundary moves, and a token sampled at the edge can fall outside it (log-prob -1e9, a KL of ~-1e9, a
    ratio of exp(1e9)). Keeping the sampled token's own logit makes its log-prob finite by construction; where
    it was inside the nucleus anyway (always, in fp32) nothing changes."""
    truncated = sampling_logits(logits, temperature=temperature, top_p=top_p)
    if top_p >= 1.0:
        return truncated
    index = tokens.unsqueeze(-1)
    own = (logits.float() / temperature).gather(-1, index)
    return truncated.scatter(-1, index, own)


def _chunk_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float, *, top_p: float) -> torch.Tensor:
    log_p = torch.log_softmax(nucleus_with_token(logits, tokens, temperature=temperature, top_p=top_p), dim=-1)
    return log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _chunk_entropy(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    log_p = torch.log_softmax(sampling_logits(logits, temperature=temperature, top_p=top_p), dim=-1)
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)  # tokens of probability 0 add nothing


def _chunks(length: int, size: int):
    return (slice(start, start + size) for start in range(0, length, size))


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float = 1.0, top_p: float = 1.0,
                   chunk_positions: int = CHUNK_POSITIONS) -> torch.Tensor:
    """[B, T] fp32 log p(token) under the sampling distribution of `logits` [B, T, V] (position t predicts
    tokens[:, t]; T ≥ 1), differentiable when `logits` is. Under top-p, the nucleus always holds the token
    itself (`nucleus_with_token`), so every log-prob is finite."""
    differentiable = torch.is_grad_enabled() and logits.requires_grad
    rows = []
    for row in range(logits.shape[0]):
        parts = []
        for span in _chunks(logits.shape[1], chunk_positions):
            args = (logits[row, span], tokens[row, span], temperature)
            parts.append(checkpoint(_chunk_logprobs, *args, top_p=top_p, use_reentrant=False) if differentiable
                         else _chunk_logprobs(*args, top_p=top_p))
        rows.append(torch.cat(parts))
    return torch.stack(rows)


@torch.no_grad()
def token_entropy(logits: torch.Tensor, *, temperature: float = 1.0, top_p: float = 1.0,
                  chunk_positions: int = CHUNK_POSITIONS) -> torch.Tensor:
    """[B, T] fp32 entropy (nats) of the sampling distribution at each position of `logits` [B, T, V]; logged,
    never differentiated."""
    rows = [torch.cat([_chunk_entropy(logits[row, span], temperature, top_p)
                       for span in _chunks(logits.shape[1], chunk_positions)])
            for row in range(logits.shape[0])]
    return torch.stack(rows)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... from each row's first real token (left padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def policy_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                  prompt_length: int) -> torch.Tensor:
    """[B, R, V] a causal LM's logits (the frozen reference's) at the positions that predicted the R answer
    tokens, in the model's dtype (stages.common.distribution turns them into log-probs). The LM head runs on
    those positions only (`logits_to_keep`), not on the prompt's."""
    answer_length = input_ids.shape[1] - prompt_length
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                   use_cache=False, logits_to_keep=answer_length + 1).logits
    return logits[:, :-1]  # the last position predicts nothing
