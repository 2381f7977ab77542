"""The verifiable objective: IFEval's checkers as a labeler and a judge on hand-written answers, its four
metrics with intervals, the guard against degenerate wins, and the shipped instruction data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core.errors import InputError
from measures.guard import content_f1, function_word_share, guard_metrics, repeated_ngram_share
from measures.instruction_metrics import instruction_metrics, per_instruction_type
from rows.instructions import Checked, check, describe, instructions_of
from rows.records import prompt_and_reference, prompt_problems, read_rows
from stages.rank.rules import instructions_followed, instructions_followed_strict, instructions_then_content
from tests.helpers import DATA, REPO

PROMPT = [{"role": "user", "content": "What is a kernel?"}]
ANSWER = "The core of an operating system that manages memory and processes."

#: (instruction id, kwargs, an answer that follows it, one that breaks it)
CASES = [
    ("change_case:english_lowercase", {}, ANSWER.lower(), ANSWER),
    ("change_case:english_capital", {}, ANSWER.upper(), ANSWER),
    ("punctuation:no_comma", {}, ANSWER, "The core, which manages memory, and processes."),
    ("startend:quotation", {}, f'"{ANSWER}"', ANSWER),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, f"{ANSWER} Any other questions?", ANSWER),
    ("detectable_format:title", {}, f"<<Kernels>>\n\n{ANSWER}", ANSWER),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, f"{ANSWER}\n\nP.S. I hope this helps.", ANSWER),
    ("keywords:existence", {"keywords": ["memory", "processes"]}, ANSWER, "The core of an operating system."),
    ("length_constraints:number_words", {"num_words": 8, "relation": "less than"}, "The core of an operating system.",
     ANSWER),
    ("keywords:forbidden_words", {"forbidden_words": ["memory"]}, "The core of an operating system.", ANSWER),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 1}, f"*The core* {ANSWER[9:]}", ANSWER),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "The core of an OS.\n\n***\n\nIt manages memory.",
     ANSWER),
    ("combination:repeat_prompt", {"prompt_to_repeat": "What is a kernel?"}, f"What is a kernel?\n\n{ANSWER}", ANSWER),
]


@pytest.mark.parametrize("instruction_id, kwargs, follows, breaks", CASES, ids=[c[0] for c in CASES])
def test_each_instruction_type_is_checked_by_ifevals_own_checker(instruction_id, kwargs, follows, *, breaks):
    instructions = [{"id": instruction_id, "kwargs": kwargs}]
    assert instructions_followed(PROMPT, [follows, breaks], None, instructions=instructions) == [1.0, 0.0]
    assert instructions_followed_strict(PROMPT, [follows, breaks], None, instructions=instructions) == [1.0, 0.0]


def test_loose_forgives_a_first_line_and_asterisks_strict_does_not():
    instructions = [{"id": "startend:quotation", "kwargs": {}}, {"id": "punctuation:no_comma", "kwargs": {}}]
    answer = f'Sure, here it is:\n"{ANSWER}"'
    assert instructions_followed(PROMPT, [answer], None, instructions=instructions) == [1.0]
    assert instructions_followed_strict(PROMPT, [answer], None, instructions=instructions) == [0.0]
    half = check(f'"{ANSWER}", ok', instructions, "What is a kernel?")
    assert half == [Checked("startend:quotation", False, False), Checked("punctuation:no_comma", False, False)]


def test_the_labeler_ranks_by_instructions_first_then_by_content():
    instructions = [{"id": "change_case:english_lowercase", "kwargs": {}}]
    reference = ANSWER.lower()
    scores = instructions_then_content(PROMPT, [reference, "the the the the.", ANSWER, "Bananas."], reference,
                                       instructions=instructions)
    assert scores[0] > scores[1] > scores[2] > scores[3] - 1e-9
    assert scores[1] == pytest.approx(1.0)  # follows (lowercase English) but says nothing
    with pytest.raises(ValueError, match="needs prompts with verifiable instructions"):
        instructions_followed(PROMPT, [ANSWER], None)


def test_rows_carry_instructions_in_ifevals_shape_and_bad_ones_are_refused_with_their_line(tmp_path):
    row = {"prompt": "What is a kernel? " + describe("punctuation:no_comma", {}), "completion": ANSWER,
           "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    assert prompt_and_reference(row)["instructions"] == [{"id": "punctuation:no_comma", "kwargs": {}}]
    assert "instructions" not in prompt_and_reference({"prompt": "hi", "completion": "yo"})
    ifeval_row = {"key": 1, "prompt": "Write a haiku.", "instruction_id_list": ["startend:end_checker"],
                  "kwargs": [{"end_phrase": "Is there anything else I can help with?", "num_words": None}]}
    assert prompt_and_reference(ifeval_row)["instructions"][0]["kwargs"] == {
        "end_phrase": "Is there anything else I can help with?"}
    bad = [{**row, "instruction_id_list": ["punctuation:no_kommas"]},
           {**row, "instruction_id_list": ["startend:end_checker"], "kwargs": [{}]},
           {**row, "instruction_id_list": ["length_constraints:number_sentences"],
            "kwargs": [{"num_sentences": 2, "relation": "less than"}]},
           {**row, "kwargs": [{}, {}]}]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [row, *bad]))
    problems = prompt_problems([str(path)])
    assert len(problems) == 4 and all(str(path) in p for p in problems)
    assert ":2:" in problems[0] and "unknown instruction id 'punctuation:no_kommas'" in problems[0]
    assert ":3:" in problems[1] and "missing end_phrase" in problems[1]
    assert ":4:" in problems[2] and "punkt" in problems[2]
    assert ":5:" in problems[3] and "kwargs must be a list of 1 mappings" in problems[3]
    with pytest.raises(InputError):
        read_rows(str(path), prompt_and_reference)


def test_the_four_metrics_the_paired_difference_and_the_per_type_table():
    follow = [Checked("a", True, True), Checked("b", True, True)]
    half = [Checked("a", False, True), Checked("b", False, False)]
    none = [Checked("a", False, False), Checked("b", False, False)]
    policy, baseline = [follow] * 30 + [half] * 10, [half] * 20 + [none] * 20
    found = instruction_metrics(policy, baseline=baseline, seed=0)
    assert found["prompt_loose"] == pytest.approx(30 / 40) and found["prompt_strict"] == pytest.approx(30 / 40)
    assert found["instruction_loose"] == pytest.approx((60 + 10) / 80)
    assert found["instruction_strict"] == pytest.approx(60 / 80)
    assert found["prompt_loose_diff"] == pytest.approx(30 / 40)
    assert found["instruction_loose_diff"] == pytest.approx((70 - 20) / 80)
    for name in ("prompt_loose", "instruction_strict", "prompt_loose_diff"):
        assert found[f"{name}_low"] <= found[name] <= found[f"{name}_high"]
    assert found["prompt_loose_diff_low"] > 0
    same = instruction_metrics(policy, baseline=policy, seed=0)
    assert same["prompt_loose_diff"] == 0 and same["prompt_loose_diff_low"] == same["prompt_loose_diff_high"] == 0
    table = per_instruction_type(policy)
    assert table["a"] == {"count": 40, "loose": 1.0, "strict": pytest.approx(0.75)}
    assert table["b"]["loose"] == pytest.approx(0.75)


def test_the_guard_flags_a_the_the_the_policy():
    reference = "A kernel is the core of an operating system that manages memory."
    honest = ["The kernel is the core of the operating system.", "It manages memory and processes for programs."]
    degenerate = ["the the a the of the a the", "a the the of a the the a"]
    fair = guard_metrics(honest, references=[reference] * 2, stopped=[True, True], lengths=[10, 9])
    gamed = guard_metrics(degenerate, references=[reference] * 2, stopped=[False, False], lengths=[48, 48])
    assert gamed["function_word_share"] == 1.0 and fair["function_word_share"] <= 0.5
    assert gamed["distinct_2"] < fair["distinct_2"] and gamed["repeated_3gram_share"] > fair["repeated_3gram_share"]
    assert gamed["content_f1"] == 0.0 < fair["content_f1"]
    assert gamed["stop_rate"] == 0.0 and fair["stop_rate"] == 1.0
    assert function_word_share(["Kernels manage memory."]) == 0.0
    assert repeated_ngram_share("one two three one two three") == pytest.approx(1 / 4)
    assert content_f1("the the the", reference) == 0.0


def test_the_shipped_instruction_data_is_what_its_builder_writes_and_every_reference_follows(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "data" / "scripts" / "build_instructions.py"),
                             str(DATA / "sft"), str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    for name in ("sft.jsonl", "train.jsonl", "heldout.jsonl", "heldout-types.jsonl"):
        assert (tmp_path / name).read_bytes() == (DATA / "instructions" / name).read_bytes(), name
    held_types = set()
    for name in ("heldout.jsonl", "heldout-types.jsonl"):
        for row in read_rows(str(DATA / "instructions" / name), prompt_and_reference)[0]:
            assert all(c.strict for c in check(row["reference"], row["instructions"], row["prompt"][0]["content"]))
            if name == "heldout-types.jsonl":
                held_types |= {i["id"] for i in row["instructions"]}
    trained = {i for line in (DATA / "instructions" / "sft.jsonl").read_text().splitlines()
               for i in json.loads(line)["instruction_id_list"]}
    assert held_types and not held_types & trained
    assert instructions_of({"prompt": "x"}) is None
