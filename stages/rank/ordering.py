"""From a labeler's scores to ranks (1 is best, equal ranks tie), with the noise a simulated labeler adds."""

from __future__ import annotations

import math
import random


def ranks_by_score(scores: list[float]) -> list[int]:
    """Dense ranks: 1 for the highest score, equal scores share a rank."""
    distinct = sorted(set(scores), reverse=True)
    position = {score: i + 1 for i, score in enumerate(distinct)}
    return [position[score] for score in scores]


def plackett_luce_ranks(scores: list[float], temperature: float, rng: random.Random) -> list[int]:
    """An order drawn best-first from softmax(score / temperature) over the answers not yet placed
    (Plackett-Luce): close scores swap often, far ones rarely. No ties."""
    remaining = list(range(len(scores)))
    ranks = [0] * len(scores)
    for place in range(1, len(scores) + 1):
        top = max(scores[i] for i in remaining)
        weights = [math.exp((scores[i] - top) / temperature) for i in remaining]
        chosen = rng.choices(remaining, weights=weights)[0]
        ranks[chosen] = place
        remaining.remove(chosen)
    return ranks


def labeled_ranks(scores: list[float], *, temperature: float, rng: random.Random) -> list[int]:
    """The labeler's ranks of one prompt's answers: by score, or drawn with `temperature` > 0 over the distinct
    scores. Answers with equal scores tie either way: a labeler that cannot tell them apart has no preference,
    and a draw would invent one (with a checker's scores, most answers of a weak model tie)."""
    if temperature <= 0:
        return ranks_by_score(scores)
    levels = sorted(set(scores), reverse=True)
    rank_of_level = dict(zip(levels, plackett_luce_ranks(levels, temperature, rng)))
    return [rank_of_level[score] for score in scores]


def tied_pairs(ranks: list[int]) -> tuple[int, int]:
    """(tied pairs, all pairs) of one prompt's answers."""
    k = len(ranks)
    tied = sum(ranks[i] == ranks[j] for i in range(k) for j in range(i + 1, k))
    return tied, k * (k - 1) // 2
