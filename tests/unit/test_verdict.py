"""The verdict says no more than its intervals: won only when the paired difference's interval is above 0,
degraded only when a guard metric is worse with its whole interval."""

from __future__ import annotations

from measures.guard import guard_differences, worse_beyond_interval
from measures.verdict import verdicts

BASE = {"name": "sft", "prompt_loose": 0.2, "kl": 0.0, "length": 30.0, "stop_rate": 0.5, "function_word_share": 0.4}


def table(**ppo) -> dict:
    row = {"name": "ppo", "prompt_loose": 0.35, "prompt_loose_diff": 0.15, "prompt_loose_diff_low": 0.05,
           "prompt_loose_diff_high": 0.25, "kl": 12.0, "length": 20.0, "stop_rate": 0.9, "guard_worse": [], **ppo}
    return {"eval/baseline": "sft", "policies": [BASE, row]}


def test_a_win_needs_the_whole_interval_above_zero():
    [won] = verdicts(table())
    assert "won on the objective" in won and "+15.0 points" in won and "+5.0 to +25.0" in won
    assert "language held" in won and "length 30 → 20 tokens" in won
    [unclear] = verdicts(table(prompt_loose_diff_low=-0.01))
    assert "no measurable difference" in unclear and "won" not in unclear
    [lost] = verdicts(table(prompt_loose_diff=-0.1, prompt_loose_diff_low=-0.2, prompt_loose_diff_high=-0.02))
    assert "lost on the objective" in lost


def test_the_guard_names_what_degraded_and_rlvr_is_marked():
    [degraded] = verdicts(table(guard_worse=["function_word_share"], function_word_share=0.7, optimised_on_judge=True))
    assert "language degraded: function-word share 0.4 → 0.7" in degraded and "RLVR" in degraded


def test_without_instructions_the_judges_win_rate_decides():
    [judged] = verdicts({"eval/baseline": "sft", "policies": [
        {"name": "sft"}, {"name": "ppo", "win_rate": 0.6, "win_rate_low": 0.48, "win_rate_high": 0.7, "guard_worse": []}]})
    assert "no measurable preference" in judged and "60%" in judged


def test_a_degenerate_policy_is_worse_beyond_its_interval_and_an_equal_one_is_not():
    references = [f"The kernel manages memory page {i} for each program." for i in range(40)]
    degenerate = [f"the the a the of the a the {i}" for i in range(40)]
    worse = worse_beyond_interval(guard_differences(degenerate, references, references=references))
    assert set(worse) == {"function_word_share", "distinct_2", "repeated_3gram_share", "content_f1"}
    assert worse_beyond_interval(guard_differences(references, references, references=references)) == []


def test_answers_collapsed_to_a_few_tokens_are_a_degraded_win():
    from measures.guard import length_differences

    lengths = length_differences([3] * 30, [30] * 30, stopped=[True] * 30, baseline_stopped=[False] * 30)
    assert lengths["length_diff"] == -27 and lengths["length_diff_high"] == -27
    assert worse_beyond_interval(lengths, baseline_length=30.0) == ["length"]
    assert worse_beyond_interval(length_differences([20] * 30, [30] * 30, stopped=[True] * 30,
                                                    baseline_stopped=[True] * 30), baseline_length=30.0) == []
    rambling = length_differences([48] * 30, [30] * 30, stopped=[False] * 30, baseline_stopped=[True] * 30)
    assert worse_beyond_interval(rambling, baseline_length=30.0) == ["stop_rate"]
    [verdict] = verdicts(table(guard_worse=["length"], length=3.0))
    assert "language degraded: length (tokens) 30 → 3" in verdict
