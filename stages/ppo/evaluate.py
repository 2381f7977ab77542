"""The end-of-stage comparison of the SFT policy (the frozen reference) and the PPO policy.

Both answer the same held-out prompts with the same sampling settings and seed; the reward model scores
every answer. Metrics (names the report and users' scripts rely on):
- eval/sft_score, eval/ppo_score: mean reward-model score of each policy's answers;
- eval/kl: mean over PPO's answers of sum_t log pi(token) - log pi_ref(token) (a sample estimate of
  KL(pi || pi_ref) per answer, in nats);
- eval/win_rate: share of prompts where the reward model scores PPO's answer above SFT's (ties count half);
- eval/gold_win_rate: on prompts that carry a human ranking, share where PPO's answer is closer than SFT's
  to the human-preferred answer by token F1 (ties count half); null when no prompt carries one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

import torch

from stages.common.chat import prompt_text
from stages.ppo.models import Roles
from stages.ppo.rollout import Generator, encode_prompts, score_answers

_WORD = re.compile(r"\w+")


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style F1 between the lowercased word tokens of two texts (0 when either is empty)."""
    a, b = _WORD.findall(answer.lower()), _WORD.findall(reference.lower())
    common = sum((Counter(a) & Counter(b)).values())
    if not a or not b or common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def win_rate(first: list[float], second: list[float]) -> float:
    """Share of pairs where `second` beats `first` (ties count half)."""
    wins = sum(1.0 if s > f else 0.5 if s == f else 0.0 for f, s in zip(first, second))
    return wins / len(first)


@torch.no_grad()
def answers_and_scores(roles: Roles, generator: Generator, tokenizer, prompts, max_prompt_length: int,
                       temperature: float, batch_size: int, seed: int, device) -> tuple[list[str], list[float], list[float]]:
    """(answers, reward-model scores, sequence KL to the reference) of `generator`'s policy, seeded."""
    torch.manual_seed(seed)
    answers, scores, kls = [], [], []
    for start in range(0, len(prompts), batch_size):
        queries, query_mask = encode_prompts(tokenizer, prompts[start : start + batch_size], max_prompt_length, device)
        responses = generator.generate(queries, query_mask)
        scored = score_answers(roles, queries, query_mask, responses, tokenizer.eos_token_id, temperature, batch_size)
        mask = scored["response_mask"]
        kls += ((scored["logprobs"] - scored["ref_logprobs"]) * mask).sum(1).tolist()
        scores += scored["scores"].tolist()
        answers += tokenizer.batch_decode(responses * mask + tokenizer.pad_token_id * (1 - mask), skip_special_tokens=True)
    return [a.strip() for a in answers], scores, kls


def compare_policies(roles: Roles, make_generator: Callable[[torch.nn.Module], Generator], tokenizer,
                     rows: list[dict], max_prompt_length: int, temperature: float, batch_size: int, seed: int,
                     samples: int, device) -> dict:
    """The manifest metrics and sample table of the final evaluation (see the module docstring).
    The SFT policy is the frozen reference: the weights PPO started from."""
    prompts = [row["prompt"] for row in rows]
    sft = roles._replace(policy=roles.reference)
    sft_answers, sft_scores, _ = answers_and_scores(sft, make_generator(roles.reference), tokenizer, prompts,
                                                    max_prompt_length, temperature, batch_size, seed, device)
    ppo_answers, ppo_scores, ppo_kls = answers_and_scores(roles, make_generator(roles.policy), tokenizer, prompts,
                                                          max_prompt_length, temperature, batch_size, seed, device)
    gold = [(token_f1(s, row["best_answer"]), token_f1(p, row["best_answer"]))
            for row, s, p in zip(rows, sft_answers, ppo_answers) if row.get("best_answer")]
    return {
        "eval/sft_score": sum(sft_scores) / len(sft_scores),
        "eval/ppo_score": sum(ppo_scores) / len(ppo_scores),
        "eval/kl": sum(ppo_kls) / len(ppo_kls),
        "eval/win_rate": win_rate(sft_scores, ppo_scores),
        "eval/gold_win_rate": win_rate([g[0] for g in gold], [g[1] for g in gold]) if gold else None,
        "eval/prompts": len(prompts),
        "eval/gold_prompts": len(gold),
        "samples": [{"prompt": prompt_text(p), "sft": s, "ppo": a, "sft_score": round(ss, 4), "ppo_score": round(ps, 4)}
                    for p, s, a, ss, ps in list(zip(prompts, sft_answers, ppo_answers, sft_scores, ppo_scores))[:samples]],
    }
