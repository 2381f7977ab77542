"""IFEval's four metrics for a policy's answers (Zhou et al. 2023), with intervals, and against a baseline's
answers to the same prompts (torch-free).

Prompt-level accuracy: the share of prompts whose instructions are all followed; instruction-level: the share
of all instructions followed; each strict and loose (rows/instructions.py). Intervals are 95% percentile
bootstraps over prompts (a prompt's instructions resampled together); the paired difference to the baseline
is bootstrapped the same way, prompt by prompt, which is what says whether a policy beat it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from measures.stats import bootstrap_ratio_interval, mean
from rows.instructions import Checked

#: (metric name, loose?, prompt-level?)
METRICS = (("prompt_loose", True, True), ("prompt_strict", False, True),
           ("instruction_loose", True, False), ("instruction_strict", False, False))


def _followed(checked: list[Checked], loose: bool) -> int:
    return sum(c.loose if loose else c.strict for c in checked)


def _per_prompt(checked: list[Checked], *, loose: bool, prompt_level: bool) -> tuple[float, float]:
    """(numerator, denominator) of one prompt for a metric."""
    followed = _followed(checked, loose)
    return (float(followed == len(checked)), 1.0) if prompt_level else (float(followed), float(len(checked)))


def instruction_metrics(checked: Sequence[list[Checked]], *, baseline: Sequence[list[Checked]] | None = None,
                        seed: int = 0) -> dict[str, float | None]:
    """IFEval's four metrics over prompts (`checked[i]`: prompt i's instructions, checked), each with its
    interval (`_low`, `_high`), and with `baseline`, the difference to it (`_diff`, `_diff_low`, `_diff_high`)."""
    out: dict[str, float | None] = {}
    for name, loose, prompt_level in METRICS:
        pairs = [_per_prompt(c, loose=loose, prompt_level=prompt_level) for c in checked]
        numerators, denominators = [n for n, _ in pairs], [d for _, d in pairs]
        out[name] = sum(numerators) / sum(denominators) if pairs else None
        out[f"{name}_low"], out[f"{name}_high"] = bootstrap_ratio_interval(numerators, denominators, seed=seed)
        if baseline is None:
            continue
        base = [_per_prompt(c, loose=loose, prompt_level=prompt_level)[0] for c in baseline]
        differences = [n - b for n, b in zip(numerators, base)]
        out[f"{name}_diff"] = sum(differences) / sum(denominators) if pairs else None
        out[f"{name}_diff_low"], out[f"{name}_diff_high"] = bootstrap_ratio_interval(differences, denominators,
                                                                                     seed=seed)
    return out


def per_instruction_type(checked: Sequence[list[Checked]]) -> dict[str, dict[str, float]]:
    """Per IFEval instruction id: how often it was asked and its loose and strict accuracy."""
    found: dict[str, list[Checked]] = defaultdict(list)
    for prompt in checked:
        for c in prompt:
            found[c.id].append(c)
    return {key: {"count": len(values), "loose": mean([float(c.loose) for c in values]),
                  "strict": mean([float(c.strict) for c in values])} for key, values in sorted(found.items())}

