"""Rule labelers shipped with the project: programmatic preferences that simulate labelers (`labeler: {kind:
rule, function: stages.rank.rules:NAME}`). Each takes (prompt messages, K answers, the prompt's reference answer
or None) and returns K scores, higher is better; a rule with an `instructions` keyword also gets the prompt's
verifiable instructions (rows/instructions.py), or None."""

from __future__ import annotations

from measures.guard import content_f1
from measures.stats import token_f1
from rows.instructions import check, followed_share
from rows.messages import prompt_text


def reference_overlap(prompt: list[dict], answers: list[str], reference: str | None) -> list[float]:
    """Word-overlap F1 with the reference answer (SQuAD-style): the answer that says what the reference says
    wins. Needs prompts with a reference (SFT rows, or ranked rows' best answer). Function words count: a
    policy optimised against it learns to pile them up (see content_overlap)."""
    if reference is None:
        raise ValueError("reference_overlap needs a reference answer for every prompt (an SFT or ranking row)")
    return [token_f1(answer, reference) for answer in answers]


def content_overlap(prompt: list[dict], answers: list[str], reference: str | None) -> list[float]:
    """Word-overlap F1 with the reference on content words only (measures/guard.py): "the a the" scores 0."""
    if reference is None:
        raise ValueError("content_overlap needs a reference answer for every prompt (an SFT or ranking row)")
    return [content_f1(answer, reference) for answer in answers]


def _followed(prompt: list[dict], answers: list[str], instructions: list[dict] | None, *, loose: bool) -> list[float]:
    if not instructions:
        raise ValueError("instructions_followed needs prompts with verifiable instructions (rows with IFEval's "
                         "instruction_id_list and kwargs, e.g. data/instructions/)")
    text = prompt_text(prompt)
    return [followed_share(check(answer, instructions, text), loose=loose) for answer in answers]


def instructions_followed(prompt: list[dict], answers: list[str], reference: str | None, *,
                          instructions: list[dict] | None = None) -> list[float]:
    """The share of the prompt's IFEval instructions each answer follows, by IFEval's own checkers, loose (as
    IFEval's loose accuracy: also with the first or last line, or asterisks, removed)."""
    return _followed(prompt, answers, instructions, loose=True)


def instructions_followed_strict(prompt: list[dict], answers: list[str], reference: str | None, *,
                                 instructions: list[dict] | None = None) -> list[float]:
    """As instructions_followed, strict: the answer exactly as written."""
    return _followed(prompt, answers, instructions, loose=False)


def instructions_then_content(prompt: list[dict], answers: list[str], reference: str | None, *,
                              instructions: list[dict] | None = None) -> list[float]:
    """A simulated labeler for instruction following: the share of instructions followed (loose) first, then,
    a tenth as much, content-word overlap with the reference (answers that follow alike are told apart by
    what they say, not left tied)."""
    followed = _followed(prompt, answers, instructions, loose=True)
    content = [content_f1(a, reference) for a in answers] if reference else [0.0] * len(answers)
    return [f + 0.1 * c for f, c in zip(followed, content)]
