"""The end-of-stage comparison of the SFT policy (the frozen reference) and the PPO policy.

Both answer the same held-out prompts with the same sampling settings and seed; the reward model scores
every answer. Metrics (names the report and users' scripts rely on):
- eval/sft_score, eval/ppo_score: mean reward-model score of each policy's answers;
- eval/kl: mean over PPO's answers of sum_t log pi(token) - log pi_ref(token) (a sample estimate of
  KL(pi || pi_ref) per answer, in nats);
- eval/win_rate: share of prompts where the reward model scores PPO's answer above SFT's (ties count half),
  with a 95% bootstrap interval (eval/win_rate_low, _high). It is judged by the very reward model PPO
  optimised, so it flatters PPO: read it beside the rest;
- eval/gold_win_rate (and _low, _high): on prompts that carry a human ranking, share where PPO's answer is
  closer than SFT's to the human-preferred answer by token F1 (ties count half); null when none carries one;
- eval/{sft,ppo}_stop_rate, _length, _distinct_2, _function_word_share, _repeated_3gram_share, _content_f1: per
  policy, the guard against degenerate wins (measures/guard.py): the share of answers that end with EOS, their
  mean length in tokens, distinct word bigrams over all bigrams, the share of function words, of repeated
  3-grams within an answer, and overlap with the reference on content words (reward hacking by repetition
  or function words moves these while the reward model's score climbs);
- eval/judge_win_rate (and _low, _high), eval/{sft,ppo}_judge_score: with `evaluation.judge`, the same
  comparison by an independent judge, the verdict to trust.

With `evaluation.every`, `held_out_point` gives the policy's proxy score, judge score and KL on fixed held-out
prompts before the first iteration and along the way (metrics.jsonl `heldout/*`): the report plots both
scores against the KL, where over-optimisation shows (Gao et al., 2022).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from measures.guard import guard_metrics
from measures.stats import bootstrap_interval, mean, paired_wins, token_f1
from rows.messages import prompt_text
from stages.common.generation import Generator, answer_prompts, decode_answers, encode_prompts
from stages.common.tracking import AnswerTable
from stages.ppo.models import PpoModels
from stages.ppo.rollout import score_answers

#: an independent judge: rows of {prompt, answers, reference} -> each row's scores (stages.common.labelers)
Judge = Callable[[list[dict]], list[list[float]]]


@dataclass
class PolicyAnswers:
    """One policy's answers to the held-out prompts, as the evaluation reads them."""

    answers: list[str]
    scores: list[float]   # reward-model scores
    kls: list[float]      # sum over the answer of log pi - log pi_ref (0 for the reference itself)
    lengths: list[int]    # answer tokens, EOS included
    stopped: list[bool]   # ended with EOS (not cut at max_new_tokens)


@torch.no_grad()
def answers_and_scores(models: PpoModels, generator: Generator, tokenizer, *, prompts: list[list[dict]],
                       max_prompt_length: int, max_chat_length: int, temperature: float, batch_size: int, seed: int,
                       device, top_p: float = 1.0, of_policy: bool = True) -> PolicyAnswers:
    """The answers of `generator`'s model, seeded, with their scores, KL, lengths and stops: the trained
    policy, or (not `of_policy`) the reference itself, whose KL is 0."""
    torch.manual_seed(seed)
    out = PolicyAnswers([], [], [], [], [])
    for batch in answer_prompts(generator, tokenizer, prompts, max_length=max_prompt_length, device=device,
                                batch_size=batch_size):
        scored = score_answers(models, batch.queries, batch.query_mask, tokenizer=tokenizer, prompts=batch.prompts,
                               responses=batch.responses, temperature=temperature, micro_batch_size=batch_size,
                               max_length=max_chat_length, top_p=top_p, with_policy=of_policy)
        out.kls += ((scored["logprobs"] - scored["ref_logprobs"]) * batch.mask).sum(1).tolist() if of_policy \
            else [0.0] * len(batch.mask)
        out.scores += scored["scores"].tolist()
        out.answers += batch.texts
        out.lengths += batch.lengths
        out.stopped += batch.stopped
    return out


def judged(judge: Judge, rows: list[dict], *answers: list[str]) -> list[list[float]]:
    """[policy][prompt] the judge's scores of each policy's answers to `rows` (a rule sees a prompt's answers
    side by side)."""
    scored = judge([{"prompt": row["prompt"], "answers": list(options), "reference": row.get("reference"),
                     "instructions": row.get("instructions")} for row, options in zip(rows, zip(*answers))])
    return [list(column) for column in zip(*scored)] if scored else [[] for _ in answers]


def held_out_point(models: PpoModels, generator: Generator, tokenizer, *, rows: list[dict], judge: Judge | None,
                   max_prompt_length: int, max_chat_length: int, temperature: float, top_p: float, batch_size: int,
                   seed: int, device) -> tuple[dict, AnswerTable]:
    """The policy on fixed held-out prompts now (a point of the over-optimisation curve): the proxy's mean
    score, the judge's (when there is one), the KL to the reference, stop rate and length; and the answers
    with their scores, for the trackers."""
    answers = answers_and_scores(models, generator, tokenizer, prompts=[row["prompt"] for row in rows],
                                 max_prompt_length=max_prompt_length, max_chat_length=max_chat_length,
                                 temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed, device=device)
    point = {"heldout/proxy_score": mean(answers.scores), "heldout/kl": mean(answers.kls),
             **{f"heldout/{key}": value for key, value in guard_of(answers, rows).items()}}
    columns = [[prompt_text(row["prompt"]) for row in rows], answers.answers, answers.scores, answers.kls]
    if judge is not None:
        judge_scores = judged(judge, rows, answers.answers)[0]
        point["heldout/judge_score"] = mean(judge_scores)
        columns.append(judge_scores)
    names = ["prompt", "answer", "proxy score", "kl", "judge score"][: len(columns)]
    return point, AnswerTable(names, [list(cells) for cells in zip(*columns)])


def compare_policies(models: PpoModels, make_generator: Callable[..., Generator], tokenizer, *, rows: list[dict],
                     max_prompt_length: int, max_chat_length: int, temperature: float, batch_size: int, seed: int,
                     device, top_p: float = 1.0, judge: Judge | None = None) -> dict:
    """The manifest metrics of the final evaluation (see the module docstring).
    The SFT policy is the frozen reference: the weights PPO started from. `make_generator(role)` samples from
    "policy" or "reference"; `judge`, when given, is an independent judge's scores of rows of answers."""
    prompts = [row["prompt"] for row in rows]
    settings = dict(prompts=prompts, max_prompt_length=max_prompt_length, max_chat_length=max_chat_length,
                    temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed, device=device)
    sft = answers_and_scores(models, make_generator("reference"), tokenizer, of_policy=False, **settings)
    ppo = answers_and_scores(models, make_generator("policy"), tokenizer, **settings)
    gold = [(token_f1(s, row["best_answer"]), token_f1(p, row["best_answer"]))
            for row, s, p in zip(rows, sft.answers, ppo.answers) if row.get("best_answer")]
    wins = paired_wins(sft.scores, ppo.scores)
    gold_wins = paired_wins([g[0] for g in gold], [g[1] for g in gold])
    metrics = {
        "eval/sft_score": mean(sft.scores),
        "eval/ppo_score": mean(ppo.scores),
        "eval/kl": mean(ppo.kls),
        "eval/win_rate": mean(wins),
        "eval/gold_win_rate": mean(gold_wins),
        "eval/prompts": len(prompts),
        "eval/gold_prompts": len(gold),
    }
    metrics["eval/win_rate_low"], metrics["eval/win_rate_high"] = bootstrap_interval(wins, seed=seed)
    metrics["eval/gold_win_rate_low"], metrics["eval/gold_win_rate_high"] = bootstrap_interval(gold_wins, seed=seed)
    if judge is not None:
        sft_judged, ppo_judged = judged(judge, rows, sft.answers, ppo.answers)
        judge_wins = paired_wins(sft_judged, ppo_judged)
        metrics.update({"eval/sft_judge_score": mean(sft_judged), "eval/ppo_judge_score": mean(ppo_judged),
                        "eval/judge_win_rate": mean(judge_wins)})
        metrics["eval/judge_win_rate_low"], metrics["eval/judge_win_rate_high"] = bootstrap_interval(judge_wins, seed=seed)
    for name, policy in (("sft", sft), ("ppo", ppo)):
        metrics.update({f"eval/{name}_{key}": value for key, value in guard_of(policy, rows).items()})
    return metrics


def guard_of(answers: PolicyAnswers, rows: list[dict]) -> dict:
    """The guard against degenerate wins (measures/guard.py) over one policy's answers to `rows`."""
    return guard_metrics(answers.answers, references=[row.get("reference") for row in rows], stopped=answers.stopped,
                         lengths=answers.lengths)


def sample_prompts_for_table(upstream: dict | None, rows: list[dict], count: int) -> tuple[list[list[dict]], list[str | None]]:
    """(prompts, base answers) of the sample table: the prompts the SFT stage answered before and after
    fine-tuning (its manifest's samples, with the base model's answers), topped up with held-out prompts."""
    recorded = [s for s in ((upstream or {}).get("metrics") or {}).get("samples") or [] if s.get("messages")]
    prompts = [s["messages"] for s in recorded][:count]
    base: list[str | None] = [s.get("base") for s in recorded][:count]
    for row in rows:
        if len(prompts) >= count:
            break
        if row["prompt"] not in prompts:
            prompts.append(row["prompt"])
            base.append(None)
    return prompts, base


@torch.no_grad()
def sample_table(models: PpoModels, make_generator: Callable[..., Generator], tokenizer, *, prompts: list[list[dict]],
                 base_answers: list[str | None], max_prompt_length: int, max_chat_length: int, temperature: float,
                 batch_size: int, device) -> list[dict]:
    """Greedy answers of the SFT and PPO policies to `prompts`, beside the base model's (when known), each
    scored by the reward model: what the report shows as base -> SFT -> PPO."""
    rows = [{"prompt": prompt_text(p)} for p in prompts]
    for name, role in (("sft", "reference"), ("ppo", "policy")):
        greedy = answers_and_scores(models, make_generator(role, sample=False), tokenizer, prompts=prompts,
                                    max_prompt_length=max_prompt_length, max_chat_length=max_chat_length,
                                    temperature=temperature, batch_size=batch_size, seed=0, device=device,
                                    of_policy=role == "policy")
        for row, answer, score in zip(rows, greedy.answers, greedy.scores):
            row[name], row[f"{name}_score"] = answer, round(score, 4)
    known = [i for i, answer in enumerate(base_answers) if answer is not None]
    for start in range(0, len(known), batch_size):
        part = known[start : start + batch_size]
        queries, query_mask = encode_prompts(tokenizer, [prompts[i] for i in part], max_length=max_prompt_length,
                                             device=device)
        responses = answer_ids(tokenizer, [base_answers[i] for i in part], device)
        scored = score_answers(models, queries, query_mask, tokenizer=tokenizer, prompts=[prompts[i] for i in part],
                               responses=responses, temperature=temperature, micro_batch_size=batch_size,
                               max_length=max_chat_length, with_policy=False)
        texts = decode_answers(tokenizer, responses, scored["response_mask"])
        for i, text, score in zip(part, texts, scored["scores"].tolist()):
            rows[i]["base"], rows[i]["base_score"] = text, round(score, 4)
    return rows


def answer_ids(tokenizer, answers: list[str], device) -> torch.Tensor:
    """Answer texts as response token ids ending in EOS, right-padded: [B, T]."""
    ids = [tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a in answers]
    width = max(len(i) for i in ids)
    return torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i in ids], device=device)


def evaluate_policies(models: PpoModels, make_generator: Callable[..., Generator], tokenizer, *, held_out: list[dict],
                      sft_manifest: dict | None, prompts: int, samples: int, seed: int, max_prompt_length: int,
                      max_chat_length: int, temperature: float, top_p: float, batch_size: int, device,
                      judge: Judge | None = None) -> dict:
    """The end-of-stage metrics: compare_policies on the first `prompts` held-out rows, and `samples` rows of
    the sample table (the prompts the SFT stage recorded in its manifest first)."""
    settings = dict(max_prompt_length=max_prompt_length, max_chat_length=max_chat_length, temperature=temperature,
                    batch_size=batch_size, device=device)
    rows = held_out[:prompts]
    metrics = compare_policies(models, make_generator, tokenizer, rows=rows, seed=seed, top_p=top_p, judge=judge,
                               **settings)
    table_prompts, base_answers = sample_prompts_for_table(sft_manifest, rows, samples)
    metrics["samples"] = sample_table(models, make_generator, tokenizer, prompts=table_prompts,
                                      base_answers=base_answers, **settings)
    return metrics
