"""The data shipped in data/: every file has its licence beside it and parses in the documented shape."""

from __future__ import annotations

import json

import pytest

from rows.corpus import read_documents
from tests.helpers import REPO

DATA = REPO / "data"


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_dataset_folder_says_where_it_comes_from():
    for folder in (DATA / "pretrain" / "austen", DATA / "reward" / "wordnet", DATA / "reward" / "answer-quality",
                   DATA / "sft", DATA / "instructions"):
        readme = (folder / "README.md").read_text()
        assert "licen" in readme.lower() and "data/scripts/build_" in readme


def test_pretraining_corpus_reads_as_documents():
    for path in sorted((DATA / "pretrain" / "austen").glob("*.txt")):
        docs = read_documents(path)
        assert len(docs) > 1000 and all("\n" not in d for d in docs)


@pytest.mark.parametrize("source", ["chatterbot", "python-faq", "jargon"])
def test_sft_pairs(source):
    train, heldout = rows(DATA / "sft" / source / "train.jsonl"), rows(DATA / "sft" / source / "heldout.jsonl")
    assert train and heldout
    for row in train + heldout:
        assert set(row) == {"prompt", "completion"} and row["prompt"].strip() and row["completion"].strip()
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}


def test_wordnet_rankings_are_ranked_and_split_by_word():
    train, heldout = rows(DATA / "reward" / "wordnet" / "train.jsonl"), rows(DATA / "reward" / "wordnet" / "heldout.jsonl")
    assert len(train) > 4000 and len(heldout) > 400
    for row in train + heldout:
        assert set(row) == {"prompt", "answers", "ranks"}
        assert 2 <= len(row["answers"]) == len(row["ranks"]) <= 9
        assert row["ranks"] == sorted(row["ranks"]) and row["ranks"][0] == 1 and len(set(row["ranks"])) >= 2
        assert len(set(row["answers"])) == len(row["answers"])
    word = lambda r: r["prompt"].split(" '", 1)[1].rsplit("' usually", 1)[0]  # noqa: E731
    assert not {word(r) for r in train} & {word(r) for r in heldout}


def test_answer_quality_rankings_are_rebuilt_identically_from_the_sft_data(tmp_path):
    import subprocess
    import sys

    subprocess.run([sys.executable, str(DATA / "scripts" / "build_answer_quality.py"), str(DATA / "sft"), str(tmp_path)],
                   check=True, capture_output=True)
    for split in ("train", "heldout"):
        shipped = DATA / "reward" / "answer-quality" / f"{split}.jsonl"
        assert (tmp_path / f"{split}.jsonl").read_bytes() == shipped.read_bytes()
        for row in rows(shipped):
            assert row["ranks"] == [1, 2, 3, 4] and len(set(row["answers"])) == 4
    sft_heldout = {r["prompt"] for source in ("chatterbot", "python-faq", "jargon")
                   for r in rows(DATA / "sft" / source / "heldout.jsonl")}
    assert {r["prompt"] for r in rows(DATA / "reward" / "answer-quality" / "heldout.jsonl")} <= sft_heldout
