"""A guard against degenerate wins, shown beside every judge (torch-free, pure Python).

A policy can please a rule without saying anything: a word-overlap judge is won with "the a the a", a format
checker with a quoted empty phrase. These numbers say whether the language held: the share of function words,
distinct-2 over all answers, the share of an answer's word 3-grams that repeat an earlier one, and overlap with
the reference on content words only (function words removed), which the objective does not reward.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from measures.stats import distinct_n, mean, paired_difference_interval, tokens_f1

_WORD = re.compile(r"[a-z0-9']+")

#: English function words (articles, pronouns, auxiliaries, prepositions, conjunctions, determiners): the words
#: a degenerate policy piles up to win on overlap, and what content-word overlap leaves out
FUNCTION_WORDS = frozenset("""
a an the and or but nor so yet if then than because as while although though unless until since whether
of in on at by for with about against between into through during before after above below to from up down
out off over under again further once here there when where why how all any both each few more most other
some such no not only own same too very can will just should now is am are was were be been being have has
had having do does did doing would could might must shall may i me my myself we our ours ourselves you your
yours yourself yourselves he him his himself she her hers herself it its itself they them their theirs
themselves what which who whom whose this that these those let's it's i'm you're he's she's we're they're
that's there's what's isn't aren't wasn't weren't don't doesn't didn't won't can't couldn't shouldn't
""".split())


def words(text: str) -> list[str]:
    """Lowercased word tokens (apostrophes kept, so "don't" is one function word)."""
    return _WORD.findall(text.lower())


def function_word_share(texts: Sequence[str]) -> float | None:
    """The share of all words in `texts` that are function words (English prose: about 0.4-0.5)."""
    tokens = [w for t in texts for w in words(t)]
    return sum(w in FUNCTION_WORDS for w in tokens) / len(tokens) if tokens else None


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """The share of an answer's word n-grams that repeat an n-gram earlier in the same answer (0: none)."""
    tokens = words(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def content_f1(answer: str, reference: str) -> float:
    """Token F1 with the reference over content words only: "the a of the" shares nothing with any answer."""
    return tokens_f1([w for w in words(answer) if w not in FUNCTION_WORDS],
                     [w for w in words(reference) if w not in FUNCTION_WORDS])


def guard_metrics(answers: Sequence[str], *, references: Sequence[str | None], stopped: Sequence[bool],
                  lengths: Sequence[int]) -> dict[str, float | None]:
    """The guard over one policy's answers: function-word share, distinct-2, repeated 3-grams, content-word
    overlap with the references (answers without one left out), mean length in tokens, stop rate."""
    with_reference = [(a, r) for a, r in zip(answers, references) if r]
    return {
        "function_word_share": function_word_share(answers),
        "distinct_2": distinct_n(answers, 2),
        "repeated_3gram_share": mean([repeated_ngram_share(a) for a in answers]),
        "content_f1": mean([content_f1(a, r) for a, r in with_reference]),
        "length": mean([float(n) for n in lengths]),
        "stop_rate": mean([float(s) for s in stopped]),
    }


#: the guard's language metrics and the direction that is worse (+1: higher is worse)
WORSE_WHEN = {"function_word_share": +1, "distinct_2": -1, "repeated_3gram_share": +1, "content_f1": -1}


def _statistics() -> dict:
    """Each language metric as a statistic of (answer, reference) pairs."""
    return {
        "function_word_share": lambda pairs: function_word_share([a for a, _ in pairs]),
        # over the distinct prompts drawn: a bootstrap draw repeats prompts, and repeated answers would lower a
        # pooled distinct-2 for every policy (the more, the more diverse it is), biasing the difference
        "distinct_2": lambda pairs: distinct_n([a for a, _ in {id(pair): pair for pair in pairs}.values()], 2),
        "repeated_3gram_share": lambda pairs: mean([repeated_ngram_share(a) for a, _ in pairs]),
        "content_f1": lambda pairs: mean([content_f1(a, r) for a, r in pairs if r]),
    }


def guard_differences(answers: Sequence[str], baseline: Sequence[str], *, references: Sequence[str | None],
                      seed: int = 0) -> dict[str, float | None]:
    """Each language metric of `answers` minus the baseline's answers to the same prompts (`<name>_diff`), with
    a paired bootstrap interval over prompts (`_diff_low`, `_diff_high`)."""
    ours, theirs = list(zip(answers, references)), list(zip(baseline, references))
    out: dict[str, float | None] = {}
    for name, statistic in _statistics().items():
        a, b = statistic(theirs), statistic(ours)
        out[f"{name}_diff"] = b - a if a is not None and b is not None else None
        out[f"{name}_diff_low"], out[f"{name}_diff_high"] = paired_difference_interval(theirs, ours, statistic,
                                                                                       seed=seed)
    return out


def length_differences(lengths: Sequence[int], baseline: Sequence[int], *, stopped: Sequence[bool],
                       baseline_stopped: Sequence[bool], seed: int = 0) -> dict[str, float | None]:
    """Length (tokens) and stop rate minus the baseline's, with paired bootstrap intervals: an answer that
    collapsed to a few tokens, or that rambles to the token limit, follows some instructions by saying nothing."""
    out: dict[str, float | None] = {}
    for name, ours, theirs in (("length", lengths, baseline), ("stop_rate", stopped, baseline_stopped)):
        values, base = [float(v) for v in ours], [float(v) for v in theirs]
        out[f"{name}_diff"] = (mean(values) or 0.0) - (mean(base) or 0.0) if values else None
        out[f"{name}_diff_low"], out[f"{name}_diff_high"] = paired_difference_interval(base, values, mean, seed=seed)
    return out


#: an answer shorter than this share of the baseline's, with the whole interval, has collapsed
COLLAPSED_LENGTH = 0.5


def worse_beyond_interval(entry: dict, *, baseline_length: float | None = None) -> list[str]:
    """The guard metrics of an eval table row that are worse than the baseline's with their whole 95% interval:
    function-word share or repeated 3-grams up, distinct-2 or content-word overlap down, the stop rate down
    (answers cut at the limit), and the length down by more than half (`COLLAPSED_LENGTH` of the baseline's)."""
    worse = []
    for name, direction in WORSE_WHEN.items():
        low, high = entry.get(f"{name}_diff_low"), entry.get(f"{name}_diff_high")
        if low is not None and high is not None and (low > 0 if direction > 0 else high < 0):
            worse.append(name)
    if entry.get("stop_rate_diff_high") is not None and entry["stop_rate_diff_high"] < 0:
        worse.append("stop_rate")
    high = entry.get("length_diff_high")
    if baseline_length and high is not None and high < -COLLAPSED_LENGTH * baseline_length:
        worse.append("length")
    return worse
