"""Rule labelers shipped with the project: programmatic preferences that simulate labelers (`labeler: {kind:
rule, function: stages.rank.rules:NAME}`). Each takes (prompt messages, K answers, the prompt's reference answer
or None) and returns K scores, higher is better."""

from __future__ import annotations

from core.stats import token_f1


def reference_overlap(prompt: list[dict], answers: list[str], reference: str | None) -> list[float]:
    """Word-overlap F1 with the reference answer (SQuAD-style): the answer that says what the reference says
    wins. Needs prompts with a reference (SFT rows, or ranked rows' best answer)."""
    if reference is None:
        raise ValueError("reference_overlap needs a reference answer for every prompt (an SFT or ranking row)")
    return [token_f1(answer, reference) for answer in answers]
