"""Rankings as DPO pairs, each prompt weighted once (pure functions)."""

from __future__ import annotations

import random


def untied_pairs(ranking: dict) -> list[tuple[str, str]]:
    """Every (better, worse) pair of a ranking whose ranks differ (lower rank is better), in answer order."""
    answers, ranks = ranking["answers"], ranking["ranks"]
    return [(answers[i], answers[j]) for i in range(len(answers)) for j in range(len(answers)) if ranks[i] < ranks[j]]


def prompt_weighted_pairs(rankings: list[dict], seed: int) -> list[dict]:
    """Conversational DPO rows `{prompt, chosen, rejected}` in which every prompt appears equally often.

    TRL's DPO has no per-example weights, so weighting is by the rows themselves: every prompt appears E times,
    E = the mean number of untied pairs per prompt (rounded, at least 1), so the set is about as large as the
    pairs themselves. A prompt with more pairs than E gives a seeded sample of E of them; one with fewer cycles
    through its own from a seeded start. Over the set each prompt weighs the same (as the reward kind
    averages a prompt's pairs); with pairs only (one per prompt) it is the rows as they are. (Repeating every
    prompt as often as the largest count instead made 120 copies of a lone pair beside a ranking of 16.)
    """
    rng = random.Random(seed)
    per_prompt = [untied_pairs(r) for r in rankings]
    counts = [len(p) for p in per_prompt if p]
    repeats = max(1, round(sum(counts) / len(counts))) if counts else 0
    rows = []
    for ranking, pairs in zip(rankings, per_prompt):
        if len(pairs) > repeats:
            chosen_pairs = rng.sample(pairs, repeats)
        else:
            start = rng.randrange(len(pairs))
            chosen_pairs = [pairs[(start + k) % len(pairs)] for k in range(repeats)]
        for better, worse in chosen_pairs:
            rows.append({"prompt": ranking["prompt"], "chosen": [{"role": "assistant", "content": better}],
                         "rejected": [{"role": "assistant", "content": worse}]})
    return rows
