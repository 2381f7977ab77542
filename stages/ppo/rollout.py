"""Rollouts: sample answers with the policy (stages.common.generation), then score them with all four roles
(a Trajectory)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from stages.common.distribution import policy_logits, token_logprobs, token_logprobs_and_entropy
from stages.common.generation import decode_answers, response_mask
from stages.common.scoring import score_chats
from stages.ppo.losses import masked_whiten, no_reduce
from stages.ppo.models import PpoModels, trained_outputs


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


@torch.no_grad()
def score_answers(models: PpoModels, queries: torch.Tensor, query_mask: torch.Tensor, *, tokenizer,
                  prompts: list[list[dict]], responses: torch.Tensor, temperature: float, micro_batch_size: int,
                  max_length: int, top_p: float = 1.0, with_policy: bool = True) -> dict[str, torch.Tensor]:
    """Old and reference log-probs, entropies, values and reward-model scores of sampled answers, in
    micro-batches (one forward per role per micro-batch). Without `with_policy` (answers of the reference
    itself), only the reference log-probs and the scores.

    The reward model scores each answer as stages.common.scoring does for every stage: the decoded answer
    in the chat rendered by the reward model's own tokenizer and template (`models.reward_tokenizer`: the
    reward stage trained on those; at most `max_length` tokens), read by the classifier's own pooling."""
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
            logprobs, entropy = token_logprobs_and_entropy(logits, responses[part], temperature=temperature,
                                                           top_p=top_p)
            out["logprobs"].append(logprobs)
            out["entropy"].append(entropy)
            out["values"].append(values)
            del logits
        with models.autocast():
            ref_logits = policy_logits(models.reference, ids, attention, prompt_length=prompt_length)
        # the reference's distribution built as the policy's (temperature, top-p nucleus holding the sampled
        # token: finite for any token): with the same weights the KL is 0, not -log(nucleus mass) per token
        out["ref_logprobs"].append(token_logprobs(ref_logits, responses[part], temperature=temperature, top_p=top_p))
    with models.autocast():
        scores = score_chats(models.reward, models.reward_tokenizer or tokenizer, prompts,
                             answers=decode_answers(tokenizer, responses, mask),
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
