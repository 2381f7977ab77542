"""rank: a labeler orders each prompt's sampled answers; the rankings train the reward model.

    accelerate launch -m stages.rank --config PIPELINE.yaml --stage rank

Input `samples` (a sample stage), and `judge` for a reward-model labeler. Prompts are ranked in chunks of
`save_every`, each process scoring its share; the main process gathers them in prompt order and commits the
rankings so far as a checkpoint. A prompt's noise is seeded by `seed` and its index, so the labels do not
depend on the launch or on an interruption.

The artifact is `rankings.jsonl` (`{"prompt", "answers", "ranks"}`, 1 = best, ties allowed; the reward
kind's format, read through `inputs.rankings`) and `labeling.json`, who ranked.
"""

from __future__ import annotations

import random

import numpy as np
from accelerate import PartialState

from core.atomic import atomic_write_json
from core.errors import InputError
from measures.agreement import agreement
from measures.stats import mean
from rows.messages import prompt_text
from stages.common.entry import StageContext
from stages.common.hf_trainer import quiet_libraries
from stages.common.labelers import labeler_scores
from stages.common.ranking import kendall_tau_b
from stages.common.row_checkpoints import read_rows, resumable_rows, shared_work, write_rows
from stages.common.tracking import AnswerTable, log_outcome
from stages.rank.artifact import RANKINGS_FILE
from stages.rank.config import RankStage
from stages.rank.labeling import ranks_by_person
from stages.rank.labels import is_ranked, label_views
from stages.rank.ordering import labeled_ranks, tied_pairs
from stages.sample.artifact import SAMPLES_FILE, sample_key


def train(ctx: StageContext) -> dict:
    """Rank every sampled prompt, resumably; write rankings.jsonl; return the manifest metrics."""
    cfg: RankStage = ctx.config
    state = PartialState()
    quiet_libraries()
    samples = read_rows(ctx.inputs["samples"] / SAMPLES_FILE)
    people: dict = {}
    if cfg.labeler.by_people:
        samples, score, people = labeled_by_people(samples, ctx.dirs.labels, min_labeled=cfg.labeler.min_labeled)
    else:
        score = labeler_scores(cfg.labeler, judge_dir=ctx.inputs.get("judge"), device=state.device)
    temperature = getattr(cfg.labeler, "temperature", 0.0)

    def rows_of(indices: range) -> list[dict]:
        return shared_work(indices, lambda mine: [
            rank_row(samples[i], scores, temperature=temperature, rng=random.Random(f"{cfg.seed}:{i}"))
            for i, scores in zip(mine, score([samples[i] for i in mine]))])

    def announce(done: list[dict]) -> str:
        return (f"{len(samples)} prompts ranked by {cfg.labeler.describe()}"
                + (f"; resuming after prompt {len(done)}" if done else ""))
    rows = resumable_rows(ctx, count=len(samples), chunk=cfg.save_every, rows_of=rows_of, announce=announce,
                          unit="prompts")
    kept = [row for row in rows if len(set(row["ranks"])) > 1]  # all tied, or fewer than 2 answers: nothing to learn
    if state.is_main_process:
        ctx.staged_artifact.mkdir(parents=True)
        write_rows(ctx.staged_artifact / RANKINGS_FILE,
                   [{"prompt": r["prompt"], "answers": r["answers"], "ranks": r["ranks"]} for r in kept])
        inputs = ctx.spec["inputs"]
        atomic_write_json(ctx.staged_artifact / "labeling.json",
                          {"labeler": cfg.labeler.describe(), "samples_fingerprint": inputs["samples"]["fingerprint"],
                           "judge_fingerprint": inputs.get("judge", {}).get("fingerprint")})
    metrics = {**rank_metrics(rows, kept), **people}
    if state.is_main_process:
        log_outcome(ctx, metrics, step=len(rows), tables={"rankings": rankings_table(kept, limit=cfg.tracking.table_rows)})
    return metrics


def labeled_by_people(samples: list[dict], labels_path, *, min_labeled: int):
    """(the samples people ranked, a score function giving -rank, metrics of the labeling): the latest
    submission per prompt wins; skipped and flagged prompts are left out. InputError below `min_labeled`."""
    labels, people = label_views(labels_path)
    found = [labels.get(sample_key(row["prompt"], row["answers"])) for row in samples]
    ranked = [row for row, label in zip(samples, found) if is_ranked(label)]
    if len(ranked) < min_labeled:
        raise InputError(f"{labels_path}: {len(ranked)} of {len(samples)} sampled prompts are ranked, labeler.min_labeled "
                         f"is {min_labeled}: rank more with `rlhf label RUN_DIR`")

    def by_people(rows: list[dict]) -> list[list[float]]:
        return [[-float(r) for r in labels[sample_key(row["prompt"], row["answers"])]["ranks"]] for row in rows]
    metrics = {"rank/labeled_by_people": len(ranked), "rank/skipped_by_people": sum(bool(f and f.get("skip")) for f in found),
               "rank/flagged_by_people": sum(bool(f and f.get("flag")) for f in found)}
    keys = {sample_key(r["prompt"], r["answers"]) for r in samples}
    return ranked, by_people, metrics | team_metrics({key: by_person for key, by_person in people.items() if key in keys})


def team_metrics(people: dict[str, dict[str, dict]]) -> dict:
    """How many people ranked, and their agreement on the prompts two or more of them ranked (`people`: key ->
    labeler -> latest submission, for the sampled prompts)."""
    agreed = agreement(ranks_by_person(people))
    metrics = {"rank/labelers": len({name for by_person in people.values() for name in by_person})}
    if agreed:
        metrics |= {"rank/agreement_prompts": agreed["items"], "rank/agreement_pairwise": agreed["pairwise"],
                    "rank/kendalls_w": agreed["kendalls_w"]}
    return metrics


def rank_row(sample: dict, scores: list[float], *, temperature: float, rng: random.Random) -> dict:
    """One sampled prompt with the labeler's scores and ranks (and the answers' lengths, for the statistics).
    Empty answers (the policy stopped at once) are left out: a ranking row's answers are never empty."""
    kept = [i for i, answer in enumerate(sample["answers"]) if answer.strip()]
    scored = [float(scores[i]) for i in kept]
    return {"prompt": sample["prompt"], "answers": [sample["answers"][i] for i in kept], "scores": scored,
            "ranks": labeled_ranks(scored, temperature=temperature, rng=rng) if len(kept) > 1 else [1] * len(kept),
            "lengths": [sample["lengths"][i] for i in kept], "empty": len(sample["answers"]) - len(kept)}


def rankings_table(rows: list[dict], *, limit: int) -> AnswerTable:
    """The first `limit` ranked answers, a prompt's answers together from best to worst, for the trackers."""
    ranked = [[prompt_text(row["prompt"]), rank, answer, score] for row in rows
              for rank, answer, score in sorted(zip(row["ranks"], row["answers"], row["scores"]))]
    return AnswerTable(["prompt", "rank", "answer", "score"], ranked[:limit])


def rank_metrics(rows: list[dict], kept: list[dict]) -> dict:
    """Prompts kept and dropped, the share of tied answer pairs, and how much the labeler prefers length
    (mean Kendall tau-b of preference and answer length over prompts)."""
    pairs = [tied_pairs(row["ranks"]) for row in kept]
    taus = [kendall_tau_b(-np.array(row["ranks"]), np.array(row["lengths"])) for row in kept]
    return {"rank/prompts": len(kept), "rank/dropped_all_tied": len(rows) - len(kept),
            "rank/tie_share": sum(t for t, _ in pairs) / max(1, sum(n for _, n in pairs)),
            "rank/length_tau": mean([t for t in taus if np.isfinite(t)]),
            "rank/mean_best_score": mean([max(row["scores"]) for row in kept]),
            "rank/mean_score": mean([s for row in kept for s in row["scores"]]),
            "rank/empty_answers": sum(row.get("empty", 0) for row in rows)}
