"""The distribution each answer token was sampled from, and its per-token statistics, computed in chunks.

A policy's logits arrive in the model's dtype, [B, R, V] over the answer positions. Turning them into log-probs
and entropies needs fp32 over the whole vocabulary: with a 150k vocabulary, 4 answers of 512 tokens, one
such copy is 1.2 GB. Here at most `CHUNK_ELEMENTS` fp32 logits exist at a time; when that takes more than one
chunk, each chunk is checkpointed under autograd, so backward recomputes its fp32 softmax instead of keeping it
(only the incoming logits are held, as they are anyway).

Top-p finds each position's nucleus once, without autograd and without sorting the vocabulary (`nucleus_floor`:
a top-k of the candidates, widened only where they do not reach the mass); what is differentiated and
recomputed is a comparison with that floor, a softmax and a gather (stages/common/nucleus.py, shared with the
vLLM engine's sampling). The old path sorted the vocabulary three times per micro-batch (forward,
recomputation, entropy).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from stages.common.nucleus import nucleus_floor

#: fp32 full-vocabulary logits that exist at once: 128 positions of a 150k vocabulary, 77 MB
CHUNK_ELEMENTS = 128 * 150_000

#: the logit top-p gives the tokens outside the nucleus: finite (a masked log-prob stays finite in the loss)
#: and low enough that its probability is exactly 0
REMOVED_LOGIT = -1e9

def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits.float() / temperature


def _floors(logits: torch.Tensor, *, temperature: float, top_p: float) -> torch.Tensor | None:
    """[...] each position's nucleus floor for `logits` [..., V], or None without top-p."""
    if top_p >= 1.0:
        return None
    scaled = _scaled(logits.detach(), temperature)
    return nucleus_floor(scaled.reshape(-1, scaled.shape[-1]), top_p=top_p).view(scaled.shape[:-1])


def sampling_logits(logits: torch.Tensor, *, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """fp32 logits of the distribution `generate` samples from: scaled by the temperature and, with `top_p` < 1,
    truncated to the nucleus (`nucleus_floor`; what stages.common.generation.TemperatureNucleus and the vLLM
    engine apply after the temperature). `logits` is [..., V]."""
    scaled = _scaled(logits, temperature)
    floors = _floors(logits, temperature=temperature, top_p=top_p)
    return scaled if floors is None else scaled.masked_fill(scaled < floors.unsqueeze(-1), REMOVED_LOGIT)


def _chunk_logprobs(logits: torch.Tensor, tokens: torch.Tensor, floors: torch.Tensor | None, *,
                    temperature: float) -> torch.Tensor:
    """log p(token) under the nucleus plus the token itself.

    The nucleus is rebuilt from a second forward, not the one `generate` sampled from; in bf16/fp16 its
    boundary moves, and a token sampled at the edge can fall outside it (log-prob -1e9, a KL of ~-1e9, a
    ratio of exp(1e9)). Keeping the sampled token's own logit makes its log-prob finite by construction; where
    it was inside the nucleus anyway (always, in fp32) nothing changes."""
    scaled = _scaled(logits, temperature)
    index = tokens.unsqueeze(-1)
    if floors is not None:
        outside = (scaled.detach() < floors.unsqueeze(-1)).scatter(-1, index, False)
        scaled = scaled.masked_fill(outside, REMOVED_LOGIT)
    return torch.log_softmax(scaled, dim=-1).gather(-1, index).squeeze(-1)


def _chunk_entropy(logits: torch.Tensor, floors: torch.Tensor | None, temperature: float) -> torch.Tensor:
    scaled = _scaled(logits, temperature)
    if floors is not None:
        scaled = scaled.masked_fill(scaled < floors.unsqueeze(-1), REMOVED_LOGIT)
    log_p = torch.log_softmax(scaled, dim=-1)
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)  # tokens of probability 0 add nothing


def _chunks(shape: torch.Size, positions: int) -> list[tuple[slice, slice]]:
    """(rows, positions) blocks of a [B, T, V] tensor with at most `positions` positions each: whole rows
    together while they fit, else spans of one row."""
    rows, length = shape[0], shape[1]
    if length <= positions:
        step = max(1, positions // max(length, 1))
        return [(slice(start, start + step), slice(None)) for start in range(0, rows, step)]
    return [(slice(row, row + 1), slice(start, start + positions))
            for row in range(rows) for start in range(0, length, positions)]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float = 1.0, top_p: float = 1.0,
                   chunk_positions: int | None = None) -> torch.Tensor:
    """[B, T] fp32 log p(token) under the sampling distribution of `logits` [B, T, V] (position t predicts
    tokens[:, t]; T ≥ 1), differentiable when `logits` is. Under top-p, the nucleus always holds the token
    itself (`_chunk_logprobs`), so every log-prob is finite. `chunk_positions` (default: CHUNK_ELEMENTS ÷ V)
    bounds the positions whose fp32 rows exist at once."""
    logprobs, _ = _statistics(logits, tokens, temperature=temperature, top_p=top_p, chunk_positions=chunk_positions)
    return logprobs


@torch.no_grad()
def token_entropy(logits: torch.Tensor, *, temperature: float = 1.0, top_p: float = 1.0,
                  chunk_positions: int | None = None) -> torch.Tensor:
    """[B, T] fp32 entropy (nats) of the sampling distribution at each position of `logits` [B, T, V]; logged,
    never differentiated."""
    _, entropy = _statistics(logits, None, temperature=temperature, top_p=top_p, chunk_positions=chunk_positions)
    return entropy


def token_logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float = 1.0,
                               top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs` and `token_entropy` of the same logits, finding each position's nucleus once."""
    return _statistics(logits, tokens, temperature=temperature, top_p=top_p, entropy=True)


def _statistics(logits: torch.Tensor, tokens: torch.Tensor | None, *, temperature: float, top_p: float,
                chunk_positions: int | None = None, entropy: bool | None = None):
    """Block by block (`_chunks`): each position's nucleus floor once, then the tokens' log-probs (when
    `tokens` is given; checkpointed when there is more than one block to differentiate) and the entropy
    (when `entropy`, by default when there are no tokens)."""
    blocks = _chunks(logits.shape, chunk_positions or max(1, CHUNK_ELEMENTS // logits.shape[-1]))
    if not blocks:  # no rows
        empty = logits.new_zeros(logits.shape[:2], dtype=torch.float32)
        return (empty if tokens is not None else None), (empty if tokens is None or entropy else None)
    checkpointed = len(blocks) > 1 and torch.is_grad_enabled() and logits.requires_grad
    with_entropy = tokens is None if entropy is None else entropy
    logprobs, entropies = [], []
    for rows, span in blocks:
        part = logits[rows, span]
        floors = _floors(part, temperature=temperature, top_p=top_p)
        if tokens is not None:
            args = (part, tokens[rows, span], floors)
            logprobs.append(checkpoint(_chunk_logprobs, *args, temperature=temperature, use_reentrant=False)
                            if checkpointed else _chunk_logprobs(*args, temperature=temperature))
        if with_entropy:
            with torch.no_grad():
                entropies.append(_chunk_entropy(part, floors, temperature))
    return (_join(logprobs, blocks) if logprobs else None), (_join(entropies, blocks) if entropies else None)


def _join(parts: list[torch.Tensor], blocks: list[tuple[slice, slice]]) -> torch.Tensor:
    """The [B, T] whole of per-block results made by _chunks (whole rows, or spans of one row in order)."""
    if blocks and blocks[0][1] == slice(None):
        return torch.cat(parts)
    spans_per_row = sum(1 for rows, _ in blocks if rows == blocks[0][0])
    return torch.stack([torch.cat(parts[i : i + spans_per_row], dim=-1).squeeze(0)
                        for i in range(0, len(parts), spans_per_row)])


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
