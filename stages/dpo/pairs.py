"""Rankings as DPO pairs, each prompt weighted once (pure functions)."""

from __future__ import annotations

import random


def untied_pairs(ranking: dict) -> list[tuple[str, str]]:
    """Every (better, worse) pair of a ranking whose ranks differ (lower rank is better), in answer order."""
    answers, ranks = ranking["answers"], ranking["ranks"]
    return [(answers[i], answers[j]) for i in range(len(answers)) for j in range(len(answers)) if ranks[i] < ranks[j]]


def prompt_weighted_pairs(rankings: list[dict], seed: int) -> list[dict]:
    """Conversational DPO rows `{prompt, chosen, rejected}` in which every prompt appears equally often.

    A prompt with P untied pairs appears E times, E = the largest P of any prompt, cycling through its pairs
    from a seeded start: over the set each prompt weighs the same (as the reward kind averages a prompt's
    pairs) and each of its pairs ~E/P times. With pairs only (P = 1 everywhere) it is the rows as they are.
    """
    rng = random.Random(seed)
    per_prompt = [untied_pairs(r) for r in rankings]
    repeats = max((len(p) for p in per_prompt), default=0)
    rows = []
    for ranking, pairs in zip(rankings, per_prompt):
        start = rng.randrange(len(pairs))
        for k in range(repeats):
            better, worse = pairs[(start + k) % len(pairs)]
            rows.append({"prompt": ranking["prompt"], "chosen": [{"role": "assistant", "content": better}],
                         "rejected": [{"role": "assistant", "content": worse}]})
    return rows
