"""How much people agree when they rank the same answers (torch-free): on items two or more people ranked,
pairwise agreement over answer pairs and Kendall's W (coefficient of concordance, corrected for ties)."""

from __future__ import annotations

from itertools import combinations


def _order(ranks: list[int], i: int, j: int) -> int:
    """-1, 0 or 1: whether answer i is ranked better than, tied with or worse than answer j (1 = best)."""
    return (ranks[i] > ranks[j]) - (ranks[i] < ranks[j])


def pairwise_agreement(first: list[int], second: list[int]) -> float:
    """The share of answer pairs two people ordered the same way (both better, both worse, or both tied)."""
    pairs = list(combinations(range(len(first)), 2))
    return sum(_order(first, i, j) == _order(second, i, j) for i, j in pairs) / len(pairs)


def kendalls_w(rankings: list[list[int]]) -> float:
    """Kendall's W of m people's rankings of the same n answers, with the correction for ties: 1 when every
    person gives the same order, near 0 when their orders are unrelated."""
    m, n = len(rankings), len(rankings[0])
    midranks = [_midranks(r) for r in rankings]
    totals = [sum(person[i] for person in midranks) for i in range(n)]
    mean_total = m * (n + 1) / 2
    spread = sum((t - mean_total) ** 2 for t in totals)
    ties = sum(size ** 3 - size for ranks in rankings for size in _tie_sizes(ranks))
    denominator = m ** 2 * (n ** 3 - n) - m * ties
    return 12 * spread / denominator if denominator > 0 else 1.0


def _midranks(ranks: list[int]) -> list[float]:
    """Ranks 1..n with tied answers sharing the mean of the places they take."""
    order = sorted(range(len(ranks)), key=lambda i: ranks[i])
    out = [0.0] * len(ranks)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and ranks[order[end + 1]] == ranks[order[start]]:
            end += 1
        for place in range(start, end + 1):
            out[order[place]] = (start + end) / 2 + 1
        start = end + 1
    return out


def _tie_sizes(ranks: list[int]) -> list[int]:
    return [ranks.count(value) for value in set(ranks) if ranks.count(value) > 1]


def agreement(labels_by_person: dict[str, dict[str, list[int]]]) -> dict[str, float | int]:
    """Over the items (key -> {person: ranks}) ranked by two or more people: how many, the mean pairwise
    agreement over every two of their people, and the mean Kendall's W. Empty without such items."""
    shared = [list(people.values()) for people in labels_by_person.values() if len(people) >= 2]
    if not shared:
        return {}
    pairwise = [pairwise_agreement(a, b) for rankings in shared for a, b in combinations(rankings, 2)]
    return {"items": len(shared), "pairwise": sum(pairwise) / len(pairwise),
            "kendalls_w": sum(kendalls_w(rankings) for rankings in shared) / len(shared)}
