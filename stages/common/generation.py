"""Sampling answers to chat prompts with Hugging Face `generate` (KV cache, stop at EOS), for every stage that
samples: PPO's rollouts and evaluation, the `sample` kind.

Generation sits behind `Generator` so that a faster engine (vLLM, stages.common.vllm_engine) can replace the
Hugging Face `generate` loop without touching the rest; it only has to return the answer token ids.
`answer_prompts` is the one path from chat prompts to answers that sample, eval and PPO's evaluation take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Protocol

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from stages.common.nucleus import nucleus_floor


class Generator(Protocol):
    """Samples answers for left-padded prompts; returns [B, R] answer ids (padding after EOS)."""

    def generate(self, queries: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor: ...


class TemperatureNucleus(LogitsProcessor):
    """Temperature, then top-p's nucleus as the stages recompute it (stages/common/nucleus.py: ties at the edge
    kept whole, found from a top-k of candidates). It stands in for transformers' TopPLogitsWarper, which sorts
    the whole vocabulary at every step (on SmolLM2 at batch 64 on CPU, `generate` sampled 161 tokens/s with it
    and 206 with this). `generate` runs custom processors before its own warpers, so the temperature is applied
    here too and the generation config keeps temperature and top-p at 1."""

    def __init__(self, *, temperature: float, top_p: float):
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scaled = scores / self.temperature
        if self.top_p >= 1.0:
            return scaled
        return scaled.masked_fill(scaled < nucleus_floor(scaled, top_p=self.top_p).unsqueeze(-1), float("-inf"))


class HFGenerator:
    """Hugging Face `generate` with the KV cache: temperature / top-p sampling (`TemperatureNucleus`) or greedy,
    stop at EOS.

    The generation config is built whole here and stands in for the one saved with the model while `generate`
    runs (transformers fills every setting a passed config leaves unset from the model's): a repetition
    penalty, top-k or length settings shipped with a checkpoint would otherwise change the sampling policy
    behind the log-probs PPO computes (stages.common.distribution applies exactly temperature and top-p).
    `open_model()` gives the causal LM for one call (a context: ZeRO-3 gathers the weights meanwhile);
    `synced_gpus` keeps processes stepping together when the model's forward passes are collective."""

    def __init__(self, open_model: Callable[[], ContextManager], tokenizer, *, max_new_tokens: int, temperature: float,
                 top_p: float, sample: bool = True, synced_gpus: bool = False, batch_size: int | None = None):
        self.open_model = open_model
        self.synced_gpus = synced_gpus
        self.batch_size = batch_size  # prompts per `generate` call (the KV cache grows with it); None: all at once
        self.pad_token_id = tokenizer.pad_token_id
        sampling = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0) if sample else dict(do_sample=False)
        self.logits_processor = LogitsProcessorList(
            [TemperatureNucleus(temperature=temperature, top_p=top_p)] if sample else [])
        self.config = GenerationConfig(max_new_tokens=max_new_tokens, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=tokenizer.eos_token_id, **sampling)

    @torch.no_grad()
    def generate(self, queries: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        with self.open_model() as model:
            was_training, saved = model.training, model.generation_config
            model.eval()
            model.generation_config = self.config
            try:
                answers = [model.generate(input_ids=queries[part], attention_mask=query_mask[part],
                                          logits_processor=self.logits_processor,
                                          synced_gpus=self.synced_gpus)[:, queries.shape[1]:]
                           for part in self._parts(len(queries))]
            finally:
                model.train(was_training)
                model.generation_config = saved
        width = max(a.shape[1] for a in answers)
        return torch.cat([F.pad(a, (0, width - a.shape[1]), value=self.pad_token_id) for a in answers])

    def _parts(self, rows: int) -> list[slice]:
        size = self.batch_size or rows
        return [slice(start, start + size) for start in range(0, rows, size)]


def encode_prompts(tokenizer, prompts: list[list[dict]], *, max_length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-template the prompts (ending in the assistant header) and left-pad them: (ids, mask) [B, P]."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    padding, truncation = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                          add_special_tokens=False)
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = padding, truncation
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def decode_answers(tokenizer, responses: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Answer texts up to their EOS, without special tokens."""
    texts = tokenizer.batch_decode(responses * mask + tokenizer.pad_token_id * (1 - mask), skip_special_tokens=True)
    return [t.strip() for t in texts]


def response_mask(responses: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each response, 0 after it (padding or tokens past EOS).
    A response without EOS (cut at max_new_tokens) is all 1."""
    is_eos = responses == eos_token_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_eos).long()


@dataclass
class Answered:
    """A batch of chat prompts (each repeated k times) and their sampled answers: the tokens (for log-probs and
    scores) and the texts, whether each stopped at EOS and its length in tokens (EOS included)."""

    prompts: list[list[dict]]
    queries: torch.Tensor
    query_mask: torch.Tensor
    responses: torch.Tensor
    mask: torch.Tensor
    texts: list[str]
    stopped: list[bool]
    lengths: list[int]


def answer_prompts(sampler: Generator, tokenizer, prompts: list[list[dict]], *, max_length: int, device, k: int = 1,
                   batch_size: int | None = None) -> Iterator[Answered]:
    """Each chat prompt answered `k` times by `sampler` (a prompt's k answers side by side), `batch_size`
    prompts at a time (None: all in one batch). Prompts longer than `max_length` tokens keep their end."""
    size = batch_size or max(len(prompts), 1)
    for start in range(0, len(prompts), size):
        repeated = [prompt for prompt in prompts[start : start + size] for _ in range(k)]
        queries, query_mask = encode_prompts(tokenizer, repeated, max_length=max_length, device=device)
        responses = sampler.generate(queries, query_mask)
        mask = response_mask(responses, tokenizer.eos_token_id)
        stopped = ((responses == tokenizer.eos_token_id) & mask.bool()).any(1).tolist()
        yield Answered(prompts=repeated, queries=queries, query_mask=query_mask, responses=responses, mask=mask,
                       texts=decode_answers(tokenizer, responses, mask), stopped=stopped, lengths=mask.sum(1).tolist())
