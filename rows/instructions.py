"""Verifiable instructions: IFEval's (Zhou et al. 2023) instruction registry, descriptions and checkers, run
from the pinned `if-verifiable` package, never rewritten here (torch-free; the package loads on first use).

A prompt row carries its instructions in IFEval's own shape, `"instruction_id_list": [ids]` and `"kwargs":
[one mapping per id]` (a row of google/IFEval reads as is), parsed to `instructions: [{"id", "kwargs"}]`.
An answer is checked as IFEval checks it: strict (the answer as given) and loose (also with its first or last
line, or markdown asterisks, removed), per instruction and per prompt (all followed).

Left out: `length_constraints:number_sentences` and `change_case:capital_word_frequency`, whose checkers need
NLTK's punkt model (sentence splitting), which no package here ships and which is never downloaded at run
time (no network here, nor on many clusters).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from functools import cache
from typing import Any

from rows.textfiles import BadRow

#: IFEval instructions whose checker needs data no package ships: NLTK's punkt model (sentence splitting, and
#: `nltk.word_tokenize`, which splits sentences first); nothing is downloaded at run time
LEFT_OUT = {
    "length_constraints:number_sentences": "counts sentences with NLTK's punkt model, which no package here ships",
    "change_case:capital_word_frequency": "splits words with nltk.word_tokenize, which needs NLTK's punkt model, "
                                          "which no package here ships",
}


@cache
def registry() -> dict[str, Any]:
    """IFEval's instruction id -> checker class, less `LEFT_OUT`. langdetect (used by the case checkers) is
    seeded: unseeded, it can answer differently for the same text, and a judge must not."""
    import langdetect
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    langdetect.DetectorFactory.seed = 0
    return {key: value for key, value in INSTRUCTION_DICT.items() if key not in LEFT_OUT}


@cache
def conflicts() -> dict[str, set[str]]:
    """IFEval's own table of instructions that cannot be asked together (made symmetric, as IFEval does)."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS, conflict_make

    return conflict_make(copy.deepcopy(INSTRUCTION_CONFLICTS))


def instructions_of(row: dict) -> list[dict] | None:
    """A row's `instruction_id_list` and `kwargs` as `[{"id", "kwargs"}]` (None when it has none); BadRow
    when they are not IFEval's shape or name an instruction this package cannot check."""
    if "instruction_id_list" not in row:
        if "kwargs" in row:
            raise BadRow('"kwargs" without "instruction_id_list"; expected both (IFEval\'s row shape)')
        return None
    ids, kwargs = row["instruction_id_list"], row.get("kwargs")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise BadRow(f"instruction_id_list must be a non-empty list of IFEval instruction ids, got {ids!r}")
    if kwargs is None:
        kwargs = [{} for _ in ids]
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise BadRow(f"kwargs must be a list of {len(ids)} mappings, one per instruction id")
    known = registry()
    for instruction_id, arguments in zip(ids, kwargs):
        if instruction_id in LEFT_OUT:
            raise BadRow(f"{instruction_id} is left out: it {LEFT_OUT[instruction_id]}")
        if instruction_id not in known:
            raise BadRow(f"unknown instruction id {instruction_id!r}; expected one of IFEval's: "
                         + ", ".join(sorted(known)))
        given = {k for k, v in arguments.items() if v is not None}
        checker = known[instruction_id](instruction_id)
        try:
            checker.build_description(**{k: arguments[k] for k in given})
        except (TypeError, ValueError) as e:
            raise BadRow(f"kwargs of {instruction_id}: {e}") from None
        missing = sorted(set(checker.get_instruction_args_keys() or []) - given)
        if missing:
            raise BadRow(f"kwargs of {instruction_id}: missing {', '.join(missing)} (IFEval would draw them at "
                         "random on every check)")
    return [{"id": i, "kwargs": {k: v for k, v in a.items() if v is not None}} for i, a in zip(ids, kwargs)]


def describe(instruction_id: str, kwargs: dict) -> str:
    """The instruction's text, as IFEval's `build_description` writes it from these arguments. Arguments left
    out are drawn from Python's `random`, as IFEval draws them: seed it first (`seeded_description`)."""
    checker = registry()[instruction_id](instruction_id)
    return checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})


def seeded_description(instruction_id: str, kwargs: dict, seed: int) -> tuple[str, dict]:
    """(text, the complete arguments) of an instruction whose missing arguments IFEval draws, with Python's
    global random state seeded by `seed` and restored after."""
    state = random.getstate()
    random.seed(seed)
    try:
        checker = registry()[instruction_id](instruction_id)
        text = checker.build_description(**kwargs)
        return text, dict(checker.get_instruction_args() or {})
    finally:
        random.setstate(state)


@dataclass(frozen=True)
class Checked:
    """One instruction's verdict on one answer."""

    id: str
    strict: bool
    loose: bool


def check(answer: str, instructions: list[dict], prompt: str) -> list[Checked]:
    """Each instruction followed or not by `answer`, strict and loose, by IFEval's checkers (an empty answer
    follows none)."""
    from if_verifiable.common import evaluate_instructions

    results, _ = evaluate_instructions(answer, [i["id"] for i in instructions], [i["kwargs"] for i in instructions],
                                       prompt, registry())
    if not results:
        return [Checked(i["id"], False, False) for i in instructions]
    return [Checked(r.instruction_id, bool(r.strict_pass), bool(r.loose_pass)) for r in results]


def followed_share(checked: list[Checked], *, loose: bool = True) -> float:
    """The share of a prompt's instructions followed (IFEval's instruction-level score for one answer)."""
    return sum(c.loose if loose else c.strict for c in checked) / len(checked)
