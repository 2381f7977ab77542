"""Rollouts: sample answers with the policy (a Generator), then score them with all four roles (a Trajectory).

Generation sits behind `Generator` so that a faster engine (e.g. vLLM on GPU) can replace the Hugging Face
`generate` loop without touching the rest; it only has to return the answer token ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager, Protocol

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from stages.common.scoring import score_chats
from stages.ppo.distribution import token_entropy, token_logprobs
from stages.ppo.losses import masked_whiten, no_reduce, response_mask
from stages.ppo.models import PpoModels, policy_logits, trained_outputs


@dataclass
class Trajectory:
    """One rollout of B answers: P prompt tokens (left-padded), R answer tokens (right-padded)."""

    queries: torch.Tensor        # [B, P] prompt ids
    query_mask: torch.Tensor     # [B, P] 1 on real prompt tokens
    responses: torch.Tensor      # [B, R] answer ids
    response_mask: torch.Tensor  # [B, R] 1 up to and including the first EOS
    logprobs: torch.Tensor       # [B, R] log pi_old(token), temperature-scaled
    ref_logprobs: torch.Tensor   # [B, R] log pi_ref(token)
    values: torch.Tensor         # [B, R] critic's value before each token
    scores: torch.Tensor         # [B] reward-model score of the rendered chat (after penalty / clipping)
    raw_scores: torch.Tensor     # [B] reward-model score as the model gave it
    entropy: torch.Tensor        # [B, R] policy entropy at each answer token

    def __len__(self) -> int:
        return self.queries.shape[0]

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) [B, P + R] of prompt and answer."""
        return torch.cat([self.queries, self.responses], 1), torch.cat([self.query_mask, self.response_mask], 1)

    def select(self, index: torch.Tensor) -> "Trajectory":
        """The answers at `index`, as a smaller Trajectory."""
        return Trajectory(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})


class Generator(Protocol):
    """Samples answers for left-padded prompts; returns [B, R] answer ids (padding after EOS)."""

    def generate(self, queries: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor: ...


class HFGenerator:
    """Hugging Face `generate` with the KV cache: temperature / top-p sampling (or greedy), stop at EOS.

    The generation config is built whole here and stands in for the one saved with the model while `generate`
    runs (transformers fills every setting a passed config leaves unset from the model's): a repetition
    penalty, top-k or length settings shipped with a checkpoint would otherwise change the sampling policy
    behind the log-probs PPO computes (stages.ppo.distribution applies exactly temperature and top-p).
    `open_model()` gives the causal LM for one call (a context: ZeRO-3 gathers the weights meanwhile);
    `synced_gpus` keeps processes stepping together when the model's forward passes are collective."""

    def __init__(self, open_model: Callable[[], ContextManager], tokenizer, *, max_new_tokens: int, temperature: float,
                 top_p: float, sample: bool = True, synced_gpus: bool = False, batch_size: int | None = None):
        self.open_model = open_model
        self.synced_gpus = synced_gpus
        self.batch_size = batch_size  # prompts per `generate` call (the KV cache grows with it); None: all at once
        self.pad_token_id = tokenizer.pad_token_id
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if sample else \
            dict(do_sample=False)
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


@torch.no_grad()
def score_answers(models: PpoModels, queries: torch.Tensor, query_mask: torch.Tensor, *, tokenizer,
                  prompts: list[list[dict]], responses: torch.Tensor, temperature: float, micro_batch_size: int,
                  max_length: int, top_p: float = 1.0, with_policy: bool = True) -> dict[str, torch.Tensor]:
    """Old and reference log-probs, entropies, values and reward-model scores of sampled answers, in
    micro-batches (one forward per role per micro-batch). Without `with_policy` (answers of the reference
    itself), only the reference log-probs and the scores.

    The reward model scores each answer as stages.common.scoring does for every stage: the decoded answer
    in the rendered chat (at most `max_length` tokens), read by the classifier's own pooling."""
    mask = response_mask(responses, tokenizer.eos_token_id)
    prompt_length = queries.shape[1]
    keys = ("logprobs", "entropy", "values") if with_policy else ()
    out: dict[str, list[torch.Tensor]] = {k: [] for k in (*keys, "ref_logprobs")}
    for start in range(0, len(queries), micro_batch_size):
        part = slice(start, start + micro_batch_size)
        ids = torch.cat([queries[part], responses[part]], 1)
        attention = torch.cat([query_mask[part], mask[part]], 1)
        if with_policy:
            logits, values, _ = trained_outputs(models.trained, ids, attention, prompt_length=prompt_length)
            out["logprobs"].append(token_logprobs(logits, responses[part], temperature=temperature, top_p=top_p))
            out["entropy"].append(token_entropy(logits, temperature=temperature, top_p=top_p))
            out["values"].append(values)
            del logits
        with models.autocast():
            ref_logits = policy_logits(models.reference, ids, attention, prompt_length=prompt_length)
        # untruncated: the KL penalty compares the sampling policy with the whole reference distribution, so it
        # stays finite for any sampled token
        out["ref_logprobs"].append(token_logprobs(ref_logits, responses[part], temperature=temperature))
    with models.autocast():
        scores = score_chats(models.reward, tokenizer, prompts, decode_answers(tokenizer, responses, mask),
                             max_length=max_length, batch_size=micro_batch_size, device=queries.device)
    return {"response_mask": mask, "scores": scores, **{k: torch.cat(v) for k, v in out.items()}}


def score_rollout(models: PpoModels, queries: torch.Tensor, query_mask: torch.Tensor, *, tokenizer,
                  prompts: list[list[dict]], responses: torch.Tensor, temperature: float, micro_batch_size: int,
                  max_length: int, top_p: float = 1.0, missing_eos_penalty: float | None = None,
                  score_clip: float | None = None,
                  whiten_scores: bool = False,
                  reduce_sum: Callable[[torch.Tensor], torch.Tensor] = no_reduce) -> Trajectory:
    """Score sampled answers with all four roles and shape the reward-model scores (a penalty for answers cut
    before EOS, whitening, clipping): one rollout, ready for advantages."""
    eos_token_id = tokenizer.eos_token_id
    scored = score_answers(models, queries, query_mask, tokenizer=tokenizer, prompts=prompts, responses=responses,
                           temperature=temperature, micro_batch_size=micro_batch_size, max_length=max_length,
                           top_p=top_p)
    raw = scored.pop("scores")
    scores = raw.clone()
    if missing_eos_penalty is not None:
        scores -= missing_eos_penalty * (~(responses == eos_token_id).any(dim=1)).float()
    if whiten_scores:  # over every process's rollout (`reduce_sum` sums over processes)
        scores = masked_whiten(scores, torch.ones_like(scores), reduce_sum=reduce_sum)
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    return Trajectory(queries=queries, query_mask=query_mask, responses=responses, scores=scores, raw_scores=raw,
                      **scored)
