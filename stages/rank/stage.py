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
from accelerate.utils import gather_object

from core.atomic import atomic_write_json
from core.stats import mean
from stages.common.entry import StageContext
from stages.common.labelers import labeler_scores
from stages.common.ranking import kendall_tau_b
from stages.common.row_checkpoints import commit_rows, read_rows, rows_so_far, write_rows
from stages.rank.config import RANKINGS_FILE, RankStage
from stages.rank.ordering import labeled_ranks, tied_pairs
from stages.sample.config import SAMPLES_FILE


def train(ctx: StageContext) -> dict:
    """Rank every sampled prompt, resumably; write rankings.jsonl; return the manifest metrics."""
    cfg: RankStage = ctx.config
    state = PartialState()
    samples = read_rows(ctx.inputs["samples"] / SAMPLES_FILE)
    score = labeler_scores(cfg.labeler, judge_dir=ctx.inputs.get("judge"), device=state.device)
    rows = rows_so_far(ctx)
    if state.is_main_process:
        print(f"[{ctx.name}] {len(samples)} prompts ranked by {cfg.labeler.describe()}"
              + (f"; resuming after prompt {len(rows)}" if rows else ""), flush=True)
    ctx.progress.start(len(samples), len(rows))
    for start in range(len(rows), len(samples), cfg.save_every):
        chunk = range(start, min(start + cfg.save_every, len(samples)))
        mine = list(chunk)[state.process_index :: state.num_processes]
        scored = score([samples[i] for i in mine]) if mine else []
        ranked = [(i, rank_row(samples[i], scores, temperature=cfg.labeler.temperature,
                               rng=random.Random(f"{cfg.seed}:{i}")))
                  for i, scores in zip(mine, scored)]
        rows += [row for _, row in sorted(gather_object(ranked), key=lambda item: item[0])]
        if state.is_main_process:
            commit_rows(ctx, rows)
        state.wait_for_everyone()
        ctx.progress.update(len(rows), {"prompts": len(rows)})
    kept = [row for row in rows if len(set(row["ranks"])) > 1]
    if state.is_main_process:
        ctx.staged_artifact.mkdir(parents=True)
        write_rows(ctx.staged_artifact / RANKINGS_FILE,
                   [{"prompt": r["prompt"], "answers": r["answers"], "ranks": r["ranks"]} for r in kept])
        inputs = ctx.spec["inputs"]
        atomic_write_json(ctx.staged_artifact / "labeling.json",
                          {"labeler": cfg.labeler.describe(), "samples_fingerprint": inputs["samples"]["fingerprint"],
                           "judge_fingerprint": inputs.get("judge", {}).get("fingerprint")})
    return rank_metrics(rows, kept)


def rank_row(sample: dict, scores: list[float], *, temperature: float, rng: random.Random) -> dict:
    """One sampled prompt with the labeler's scores and ranks (and the answers' lengths, for the statistics)."""
    return {"prompt": sample["prompt"], "answers": sample["answers"], "scores": [float(s) for s in scores],
            "ranks": labeled_ranks([float(s) for s in scores], temperature=temperature, rng=rng),
            "lengths": sample["lengths"]}


def rank_metrics(rows: list[dict], kept: list[dict]) -> dict:
    """Prompts kept and dropped, the share of tied answer pairs, and how much the labeler prefers length
    (mean Kendall tau-b of preference and answer length over prompts)."""
    pairs = [tied_pairs(row["ranks"]) for row in kept]
    taus = [kendall_tau_b(-np.array(row["ranks"]), np.array(row["lengths"])) for row in kept]
    return {"rank/prompts": len(kept), "rank/dropped_all_tied": len(rows) - len(kept),
            "rank/tie_share": sum(t for t, _ in pairs) / max(1, sum(n for _, n in pairs)),
            "rank/length_tau": mean([t for t in taus if np.isfinite(t)]),
            "rank/mean_best_score": mean([max(row["scores"]) for row in kept]),
            "rank/mean_score": mean([s for row in kept for s in row["scores"]])}
