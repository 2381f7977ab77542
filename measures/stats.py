"""Small statistics the evaluations report beside every number (torch-free, pure Python)."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"\w+")


def mean(values: Sequence[float]) -> float | None:
    """The arithmetic mean; None for no values."""
    return sum(values) / len(values) if values else None


def bootstrap_interval(values: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float] | tuple[None, None]:
    """A percentile bootstrap interval of the mean of `values` (seeded, so a report is reproducible)."""
    if not values:
        return None, None
    rng = random.Random(seed)
    n = len(values)
    return percentile_interval([sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples)],
                               confidence=confidence)


def percentile_interval(draws: Sequence[float], *, confidence: float = 0.95) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap draws (their percentiles)."""
    ordered = sorted(draws)
    tail = (1 - confidence) / 2
    return ordered[int(tail * (len(ordered) - 1))], ordered[int(round((1 - tail) * (len(ordered) - 1)))]


def paired_wins(first: Sequence[float], second: Sequence[float]) -> list[float]:
    """Per pair: 1 where `second` beats `first`, 0.5 for a tie, 0 where it loses."""
    return [1.0 if s > f else 0.5 if s == f else 0.0 for f, s in zip(first, second)]


def distinct_n(texts: Sequence[str], n: int = 2) -> float | None:
    """Distinct word n-grams over all n-grams of the texts (Li et al., 2016): 1 is no repetition at all, near
    0 is degenerate repetition. None when the texts hold no n-gram."""
    grams = [tuple(words[i : i + n]) for words in (_WORD.findall(t.lower()) for t in texts)
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style F1 between the lowercased word tokens of two texts (0 when either is empty)."""
    return tokens_f1(_WORD.findall(answer.lower()), _WORD.findall(reference.lower()))


def tokens_f1(a: Sequence[str], b: Sequence[str]) -> float:
    """F1 of the tokens two lists share, counted with multiplicity (0 when either is empty)."""
    common = sum((Counter(a) & Counter(b)).values())
    if not a or not b or common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def bootstrap_ratio_interval(numerators: Sequence[float], denominators: Sequence[float], *, confidence: float = 0.95,
                             resamples: int = 2000, seed: int = 0) -> tuple[float, float] | tuple[None, None]:
    """A percentile bootstrap interval of sum(numerators) / sum(denominators), resampling the pairs (e.g. per
    prompt: instructions followed / instructions asked, so a prompt's instructions stay together)."""
    pairs = [(n, d) for n, d in zip(numerators, denominators)]
    if not pairs or not sum(d for _, d in pairs):
        return None, None
    rng = random.Random(seed)
    count = len(pairs)
    ratios = []
    for _ in range(resamples):
        drawn = [pairs[rng.randrange(count)] for _ in range(count)]
        total = sum(d for _, d in drawn)
        ratios.append(sum(n for n, _ in drawn) / total if total else 0.0)
    return percentile_interval(ratios, confidence=confidence)


def paired_difference_interval(first: Sequence, second: Sequence, statistic, *, confidence: float = 0.95,
                               resamples: int = 1000, seed: int = 0) -> tuple[float, float] | tuple[None, None]:
    """A percentile bootstrap interval of statistic(second) - statistic(first), resampling the pairs together
    (two policies' answers to the same prompts); `statistic` maps a list of items to a number or None."""
    if not first or len(first) != len(second):
        return None, None
    rng = random.Random(seed)
    count = len(first)
    differences = []
    for _ in range(resamples):
        drawn = [rng.randrange(count) for _ in range(count)]
        a, b = statistic([first[i] for i in drawn]), statistic([second[i] for i in drawn])
        if a is not None and b is not None:
            differences.append(b - a)
    if not differences:
        return None, None
    return percentile_interval(differences, confidence=confidence)
