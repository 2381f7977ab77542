"""Scores from a labeler (torch side): the `rank` kind orders answers by them, the `eval` kind judges
policies by them. A rule scores the answers of one prompt together; a reward-model judge scores each
answer in its chat, through stages.common.scoring like every stage."""

from __future__ import annotations

import importlib
import inspect

import torch
from transformers import AutoModelForSequenceClassification

from core.errors import InputError
from rows.messages import prompt_text
from sections.labelers import JudgeLabeler, LmJudgeLabeler, RuleLabeler
from stages.common.chat import load_chat_tokenizer
from stages.common.distribution import position_ids
from stages.common.generation import encode_prompts
from stages.common.hf_models import Loading, load_causal_lm, load_tokenizer, model_ref
from stages.common.scoring import score_chats


def labeler_scores(labeler: RuleLabeler | JudgeLabeler | LmJudgeLabeler, *, judge_dir, device):
    """A function from sample rows to each row's K scores (higher is better), by the labeler's kind."""
    scorers = {"rule": rule_scores, "judge": reward_model_scores, "lm": lm_judge}
    return scorers[labeler.kind](labeler, judge_dir=judge_dir, device=device)


def rule_scores(labeler: RuleLabeler, *, judge_dir=None, device=None):
    """The rule's scores of each row's answers, checked to be one per answer."""
    rule = rule_function(labeler.function)

    def by_rule(rows: list[dict]) -> list[list[float]]:
        scored = [list(rule(row["prompt"], row["answers"], row.get("reference"),
                            instructions=row.get("instructions"))) for row in rows]
        for row, scores in zip(rows, scored):
            if len(scores) != len(row["answers"]):
                raise ValueError(f"{labeler.function} returned {len(scores)} scores for "
                                 f"{len(row['answers'])} answers")
        return scored
    return by_rule


def reward_model_scores(labeler: JudgeLabeler, *, judge_dir, device):
    """A reward model's score of each answer in its chat: `judge_dir` (inputs.judge) or `labeler.model`."""
    source = judge_dir or labeler.model
    loading = Loading.of(labeler.loading)
    tokenizer = load_chat_tokenizer(source, "auto", loading)
    judge = AutoModelForSequenceClassification.from_pretrained(source, **loading.model_kwargs()).to(device).eval()

    def by_judge(rows: list[dict]) -> list[list[float]]:
        prompts = [row["prompt"] for row in rows for _ in row["answers"]]
        answers = [answer for row in rows for answer in row["answers"]]
        flat = score_chats(judge, tokenizer, prompts, answers=answers, max_length=labeler.max_length,
                           batch_size=labeler.batch_size, device=device).tolist()
        return per_row(flat, rows)
    return by_judge


def rule_function(function: str):
    """The rule `module:function` as `(prompt, answers, reference, *, instructions) -> scores`: a prompt's
    verifiable instructions reach only a rule that takes an `instructions` keyword."""
    module, _, name = function.partition(":")
    rule = getattr(importlib.import_module(module), name, None)
    if not inspect.isfunction(rule) or rule.__module__ != module:
        raise InputError(f"labeler function {function}: expected a Python function defined in {module} (not a "
                         "builtin or a name it imports)")
    takes_instructions = "instructions" in inspect.signature(rule).parameters

    def call(prompt: list[dict], answers: list[str], reference: str | None, *, instructions: list[dict] | None):
        if takes_instructions:
            return rule(prompt, answers, reference, instructions=instructions)
        return rule(prompt, answers, reference)
    return call


def lm_judge(labeler: LmJudgeLabeler, *, judge_dir=None, device):
    """Scores from an instruct LM: for each answer, `labeler.question` as a user turn in the LM's chat template,
    and log P("Yes") - log P("No") of the first reply token."""
    source, loading = model_ref(labeler.model.source()), Loading.of(labeler.model)
    tokenizer = load_tokenizer(source, loading)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_causal_lm(source, loading).to(device).eval()
    yes, no = (tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in ("Yes", "No"))

    @torch.no_grad()
    def by_lm(rows: list[dict]) -> list[list[float]]:
        questions = [[{"role": "user", "content": labeler.question.format(prompt=prompt_text(row["prompt"]), answer=answer)}]
                     for row in rows for answer in row["answers"]]
        flat: list[float] = []
        for start in range(0, len(questions), labeler.batch_size):
            ids, mask = encode_prompts(tokenizer, questions[start : start + labeler.batch_size],
                                       max_length=labeler.max_length, device=device)
            last = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, -1].float()
            logprobs = torch.log_softmax(last, dim=-1)
            flat += (logprobs[:, yes] - logprobs[:, no]).tolist()
        return per_row(flat, rows)
    return by_lm


def per_row(flat: list[float], rows: list[dict]) -> list[list[float]]:
    """Scores of all rows' answers in one list, split back into each row's."""
    out, at = [], 0
    for row in rows:
        out.append(flat[at : at + len(row["answers"])])
        at += len(row["answers"])
    return out
