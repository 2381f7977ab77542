"""SFT and ranking rows: accepted shapes, and every bad row refused with file, line and reason (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import InputError
from rows.records import ranking_row, read_rows, sft_row
from tests.helpers import rlhf, write_pipeline

USER = {"role": "user", "content": "What is a rose?"}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_sft_shapes_become_chat_prompt_and_answer():
    assert sft_row({"prompt": "What is a rose?", "completion": "A flower."}) == {
        "prompt": [USER], "completion": [{"role": "assistant", "content": "A flower."}]}
    messages = [{"role": "system", "content": "Be brief."}, USER, {"role": "assistant", "content": "A flower."}]
    assert sft_row({"messages": messages}) == {"prompt": messages[:2], "completion": messages[2:]}
    assert sft_row({"prompt": [USER], "completion": [{"role": "assistant", "content": "A flower."}]})["prompt"] == [USER]


def test_ranking_shapes_become_answers_with_ranks():
    assert ranking_row({"prompt": "p", "answers": ["a", "b", "c"]})["ranks"] == [1, 2, 3]
    assert ranking_row({"prompt": "p", "answers": ["a", "b", "c"], "ranks": [1, 2, 2]})["ranks"] == [1, 2, 2]
    assert ranking_row({"prompt": "p", "chosen": "a", "rejected": "b"}) == {
        "prompt": [{"role": "user", "content": "p"}], "answers": ["a", "b"], "ranks": [1, 2]}
    assert ranking_row({"prompt": [USER], "answers": ["a", "b"]})["prompt"] == [USER]


BAD_RANKINGS = [
    ({"prompt": "p", "answers": ["only one"]}, "answers must be a list of at least 2 answers"),
    ({"prompt": "  ", "answers": ["a", "b"]}, "prompt is empty"),
    ({"prompt": "p", "answers": ["a", ""]}, "answers[1] is empty"),
    ({"prompt": "p", "answers": ["a", "b", "c"], "ranks": [1, 2]}, "ranks has 2 entries for 3 answers"),
    ({"prompt": "p", "answers": ["a", "b"], "ranks": [1, 1]}, "all answers are tied"),
    ({"prompt": "p", "answers": ["a", "b"], "ranks": [1, 2.5]}, "ranks must be integers"),
    ({"prompt": "p", "answers": ["a", "b"], "ranks": [True, False]}, "ranks must be integers"),
    ({"prompt": "p", "chosen": "a"}, 'needs both "chosen" and "rejected"'),
    ({"answers": ["a", "b"]}, 'missing "prompt"'),
    ({"prompt": "p", "text": "x"}, 'expected "answers"'),
    ({"prompt": [{"role": "robot", "content": "x"}], "answers": ["a", "b"]}, "prompt[0].role is 'robot'"),
    ("[1, 2]", "expected a JSON object, got list"),
    ("{not json", "not valid JSON"),
]


@pytest.mark.parametrize("row, message", BAD_RANKINGS, ids=[m for _, m in BAD_RANKINGS])
def test_every_bad_ranking_row_is_refused_with_file_line_and_reason(tmp_path, row, message):
    path = write_jsonl(tmp_path / "rankings.jsonl", [{"prompt": "fine", "answers": ["a", "b"]}, row])
    with pytest.raises(InputError) as raised:
        read_rows(path, ranking_row)
    assert len(raised.value.problems) == 1
    assert raised.value.problems[0].startswith(f"{path}:2: ") and message in raised.value.problems[0]


def test_bad_rows_can_be_skipped_and_are_counted(tmp_path):
    path = write_jsonl(tmp_path / "rankings.jsonl", [{"prompt": "p", "answers": ["a", "b"]}] +
                       [row for row, _ in BAD_RANKINGS])
    rows, bad = read_rows(path, ranking_row, skip_bad_rows=True)
    assert len(rows) == 1 and len(bad) == len(BAD_RANKINGS)


def test_many_bad_rows_are_listed_up_to_ten_then_counted(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "answers": ["a"]}] * 25)
    with pytest.raises(InputError) as raised:
        read_rows(path, ranking_row)
    assert len(raised.value.problems) == 11 and "15 more bad rows" in raised.value.problems[-1]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p"}, 'expected "prompt" and "completion"'),
    ({"prompt": "p", "completion": ""}, "completion is empty"),
    ({"messages": [USER]}, "final assistant turn"),
    ({"messages": [USER, {"role": "assistant", "content": "a"}], "prompt": "p"}, "not both"),
    ({"prompt": "p", "completion": 3}, "completion must be a string"),
])
def test_every_bad_sft_row_is_refused_with_file_line_and_reason(tmp_path, row, message):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "c"}, row])
    with pytest.raises(InputError) as raised:
        read_rows(path, sft_row)
    assert raised.value.problems[0].startswith(f"{path}:2: ") and message in raised.value.problems[0]


def test_rlhf_run_refuses_bad_rows_before_launching_anything(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "p"}])
    ranked = write_jsonl(tmp_path / "ranked.jsonl", [{"prompt": "p", "answers": ["a", "b"], "ranks": [2, 2]}])
    train = {"max_steps": 1}
    path = write_pipeline(tmp_path / "p.yaml", {
        "sft": {"kind": "sft", "model": {"path": "model"}, "data": {"train": ["sft.jsonl"]}, "train": train},
        "rm": {"kind": "reward", "inputs": {"model": "sft"}, "data": {"train": ["ranked.jsonl"]}, "train": train},
    })
    result = rlhf("run", path)
    assert result.returncode == 2
    assert f"{sft}:2: " in result.stderr and f"{ranked}:1: all answers are tied" in result.stderr
    assert not (tmp_path / "run" / "sft").exists()  # nothing launched, nothing written


def test_a_stage_launched_by_hand_refuses_bad_rows_with_exit_2_before_loading_a_model(tmp_path):
    import subprocess
    import sys

    from tests.helpers import REPO

    (tmp_path / "model").mkdir()  # never read: the rows are checked first
    ranked = write_jsonl(tmp_path / "ranked.jsonl", [{"prompt": "p", "answers": ["a", "b"]},
                                                     {"prompt": "p", "answers": ["a", "b"], "ranks": [1]}])
    path = write_pipeline(tmp_path / "p.yaml", {"rm": {"kind": "reward", "model": {"path": "model"},
                                                       "data": {"train": ["ranked.jsonl"]}, "train": {"max_steps": 1}}})
    result = subprocess.run([sys.executable, "-m", "stages.reward", "--config", str(path), "--stage", "rm"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr
    assert f"error: {ranked}:2: ranks has 1 entries for 2 answers; expected one rank per answer" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "rm" / "manifest.json").exists()
