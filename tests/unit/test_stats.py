"""The evaluation statistics, against numbers worked out by hand."""

from __future__ import annotations

import pytest

from measures.stats import bootstrap_interval, distinct_n, mean, paired_wins, token_f1


def test_paired_wins_count_ties_as_half():
    assert paired_wins([1.0, 2.0, 3.0], [2.0, 2.0, 1.0]) == [1.0, 0.5, 0.0]
    assert mean(paired_wins([1.0, 2.0, 3.0], [2.0, 2.0, 1.0])) == pytest.approx(0.5)


def test_distinct_2_is_one_without_repetition_and_low_for_loops():
    assert distinct_n(["the cat sat", "a dog ran"]) == 1.0
    assert distinct_n(["and a my and a my and a my"]) == pytest.approx(3 / 8)
    assert distinct_n(["one", ""]) is None


def test_the_bootstrap_interval_holds_the_mean_and_narrows_with_more_data():
    few = [1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 1.0]
    low, high = bootstrap_interval(few)
    assert low <= mean(few) <= high and 0.0 <= low < high <= 1.0
    many_low, many_high = bootstrap_interval(few * 25)
    assert many_high - many_low < (high - low) / 2
    assert bootstrap_interval(few) == (low, high)  # seeded: the same report twice
    assert bootstrap_interval([]) == (None, None)
    assert bootstrap_interval([1.0] * 10) == (1.0, 1.0)


def test_token_f1_by_hand():
    assert token_f1("Cat sat", "the cat sat down") == pytest.approx(2 / 3)  # precision 1, recall 1/2
    assert token_f1("dog", "the cat") == 0.0 and token_f1("", "x") == 0.0
