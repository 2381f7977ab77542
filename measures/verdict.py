"""The verdict of an eval stage, in words that claim no more than its numbers (torch-free).

On prompts with verifiable instructions the objective is IFEval's prompt-level loose accuracy, and a policy
won only when the 95% interval of its paired difference to the baseline is above 0; otherwise the judge's
paired win rate, won when its interval is above one half. Beside it, always, the guard: the language held
unless a guard metric is worse than the baseline's with its whole interval, or the answers collapsed to less
than half their length (measures/guard.py).
"""

from __future__ import annotations

from core.numbers import fmt, percent

GUARD_NAMES = {"function_word_share": "function-word share", "distinct_2": "distinct-2",
               "repeated_3gram_share": "repeated 3-grams", "content_f1": "content-word overlap with the reference"}
#: guard metrics named in a verdict beside the language ones (not columns of their own in the guard table)
SHAPE_NAMES = {"length": "length (tokens)", "stop_rate": "stop rate"}


def points(value: float | None) -> str:
    """A difference of shares in percentage points, signed ('+12.5')."""
    return "–" if value is None else f"{100 * value:+.1f}"


def objective_clause(row: dict, baseline: dict) -> str:
    """Won, lost or no measurable difference on the objective, with the numbers that say so."""
    if row.get("prompt_loose") is not None and row.get("prompt_loose_diff_low") is not None:
        low, high = row["prompt_loose_diff_low"], row["prompt_loose_diff_high"]
        outcome = ("won on the objective" if low > 0 else "lost on the objective" if high < 0
                   else "no measurable difference on the objective (the interval includes 0)")
        return (f"{outcome}: IFEval prompt-level loose accuracy {percent(baseline.get('prompt_loose'))} → "
                f"{percent(row['prompt_loose'])} ({points(row['prompt_loose_diff'])} points, 95% interval of the "
                f"paired difference {points(low)} to {points(high)})")
    low, high = row.get("win_rate_low"), row.get("win_rate_high")
    if low is None:
        return "not judged"
    outcome = ("preferred by the judge" if low > 0.5 else "dispreferred by the judge" if high < 0.5
               else "no measurable preference by the judge (the interval includes 50%)")
    return f"{outcome}: win rate {percent(row['win_rate'])} (95% interval {percent(low)}–{percent(high)})"


def guard_clause(row: dict, baseline: dict) -> str:
    """Whether the language held, naming each guard metric worse beyond its interval."""
    worse = row.get("guard_worse")
    if worse is None:
        return "the guard was not measured"
    if not worse:
        return "language held (no guard metric worse than the baseline's beyond its 95% interval)"
    shown = lambda value, name: percent(value) if name == "stop_rate" else fmt(value)  # noqa: E731
    named = [f"{({**GUARD_NAMES, **SHAPE_NAMES})[name]} {shown(baseline.get(name), name)} → "
             f"{shown(row.get(name), name)}" for name in worse]
    return "language degraded: " + ", ".join(named)


def policy_verdict(row: dict, baseline: dict) -> str:
    """One policy against the baseline: objective, guard, KL, stop rate; RLVR marked."""
    rlvr = " (RLVR: optimised on the judge's own rule, so the held-out types and the guard carry the verdict)" \
        if row.get("optimised_on_judge") else ""
    return (f"{row['name']}: {objective_clause(row, baseline)}; {guard_clause(row, baseline)}; KL "
            f"{fmt(row.get('kl'))} nats per answer, length {fmt(baseline.get('length'))} → {fmt(row.get('length'))} "
            f"tokens, stop rate {percent(baseline.get('stop_rate'))} → {percent(row.get('stop_rate'))}{rlvr}")


def verdicts(metrics: dict) -> list[str]:
    """One sentence per policy other than the baseline of an eval stage's metrics ([] without a table)."""
    rows = metrics.get("policies") or []
    baseline_name = metrics.get("eval/baseline")
    baseline = next((r for r in rows if r["name"] == baseline_name), None)
    if baseline is None:
        return []
    return [policy_verdict(r, baseline) for r in rows if r["name"] != baseline_name]
