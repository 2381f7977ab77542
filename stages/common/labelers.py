"""Scores from a labeler (torch side): the `rank` kind orders answers by them, the `eval` kind judges
policies by them. A rule scores the answers of one prompt together; a reward-model judge scores each
answer in its chat, through stages.common.scoring like every stage."""

from __future__ import annotations

import importlib

from transformers import AutoModelForSequenceClassification

from core.labelers import JudgeLabeler, RuleLabeler
from stages.common.chat import load_chat_tokenizer
from stages.common.hf_models import Loading
from stages.common.scoring import score_chats


def labeler_scores(labeler: RuleLabeler | JudgeLabeler, *, judge_dir, device):
    """A function from sample rows to each row's K scores (higher is better)."""
    if isinstance(labeler, RuleLabeler):
        module, _, name = labeler.function.partition(":")
        rule = getattr(importlib.import_module(module), name)

        def by_rule(rows: list[dict]) -> list[list[float]]:
            scored = [list(rule(row["prompt"], row["answers"], row.get("reference"))) for row in rows]
            for row, scores in zip(rows, scored):
                if len(scores) != len(row["answers"]):
                    raise ValueError(f"{labeler.function} returned {len(scores)} scores for "
                                     f"{len(row['answers'])} answers")
            return scored
        return by_rule

    source = judge_dir or labeler.model
    loading = Loading.of(labeler.loading)
    tokenizer = load_chat_tokenizer(source, "auto", loading)
    judge = AutoModelForSequenceClassification.from_pretrained(source, **loading.model_kwargs()).to(device).eval()

    def by_judge(rows: list[dict]) -> list[list[float]]:
        prompts = [row["prompt"] for row in rows for _ in row["answers"]]
        answers = [answer for row in rows for answer in row["answers"]]
        flat = score_chats(judge, tokenizer, prompts, answers, max_length=labeler.max_length,
                           batch_size=labeler.batch_size, device=device).tolist()
        out, at = [], 0
        for row in rows:
            out.append(flat[at : at + len(row["answers"])])
            at += len(row["answers"])
        return out
    return by_judge
