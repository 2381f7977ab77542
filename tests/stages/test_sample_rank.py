"""The recipe's own comparison data: the SFT model samples K answers per prompt (sample), a labeler ranks them
(rank), and a reward model learns from those rankings (reward with inputs.rankings)."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoModelForSequenceClassification

from core.checkpoints import complete_checkpoints
from core.layout import StageDirs
from core.manifest import read_manifest
from stages.common.chat import load_chat_tokenizer
from stages.common.scoring import score_chats
from tests.helpers import DATA, chat_pipeline, rlhf


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_policy_samples_k_answers_to_each_distinct_prompt(tiny_chat_run):
    samples = rows(tiny_chat_run / "samples" / "artifact" / "samples.jsonl")
    source = [json.loads(line) for line in (DATA / "sft" / "chatterbot" / "train.jsonl").read_text().splitlines()]
    distinct = list(dict.fromkeys(row["prompt"] for row in source))[:32]
    assert [row["prompt"][-1]["content"] for row in samples] == distinct  # file order, duplicates once
    for row in samples:
        assert len(row["answers"]) == len(row["stopped"]) == len(row["lengths"]) == 4
        assert all(1 <= n <= 12 for n in row["lengths"])
        assert all(n < 12 for n, stopped in zip(row["lengths"], row["stopped"]) if stopped)  # EOS within budget
        assert row["reference"]  # the SFT row's completion, for rule labelers
    assert len({a for row in samples for a in row["answers"]}) > len(samples)  # sampled: a prompt's answers differ
    metrics = read_manifest(StageDirs(tiny_chat_run / "samples"))["metrics"]
    assert metrics["samples/prompts"] == 32 and metrics["samples/answers"] == 128
    assert 0 <= metrics["samples/stop_rate"] <= 1 and metrics["samples/distinct_2"] > 0
    sampling = json.loads((tiny_chat_run / "samples" / "artifact" / "sampling.json").read_text())
    assert sampling["policy_fingerprint"] == read_manifest(StageDirs(tiny_chat_run / "sft"))["fingerprint"]


def test_the_judge_ranks_by_its_scores_and_the_reward_model_learns_from_the_rankings(tiny_chat_run):
    ranked = rows(tiny_chat_run / "ranked" / "artifact" / "rankings.jsonl")
    samples = rows(tiny_chat_run / "samples" / "artifact" / "samples.jsonl")
    metrics = read_manifest(StageDirs(tiny_chat_run / "ranked"))["metrics"]
    assert metrics["rank/prompts"] + metrics["rank/dropped_all_tied"] == len(samples)
    assert metrics["rank/prompts"] == len(ranked) > 0
    by_prompt = {json.dumps(row["prompt"]): row for row in samples}
    for row in ranked:
        assert row["answers"] == [a for a in by_prompt[json.dumps(row["prompt"])]["answers"] if a.strip()]  # none empty
        assert min(row["ranks"]) == 1 and len(set(row["ranks"])) > 1

    # the judge is the rm stage's reward model: its best-scored answer got rank 1
    judge = AutoModelForSequenceClassification.from_pretrained(tiny_chat_run / "rm" / "artifact")
    tokenizer = load_chat_tokenizer(tiny_chat_run / "rm" / "artifact", "auto")
    for row in ranked[:4]:
        scores = score_chats(judge.eval(), tokenizer, [row["prompt"]] * len(row["answers"]), answers=row["answers"],
                             max_length=64, batch_size=4, device="cpu").tolist()
        assert row["ranks"][scores.index(max(scores))] == 1

    own = read_manifest(StageDirs(tiny_chat_run / "rm_own"))
    assert own["inputs"]["rankings"]["fingerprint"] == read_manifest(StageDirs(tiny_chat_run / "ranked"))["fingerprint"]
    assert own["metrics"]["train/steps"] == 20 and own["metrics"]["eval/pairwise_accuracy"] is not None


@pytest.mark.parametrize("stage,name", [("samples", "samples.jsonl"), ("ranked", "rankings.jsonl")])
def test_an_interrupted_row_stage_resumes_from_its_rows_so_far(tmp_path, tiny_chat_run, stage, *, name):
    """What a SIGKILL between two checkpoints leaves (the tiny model samples 32 prompts in a fraction of a
    second, faster than a kill lands): no manifest, no artifact, an earlier checkpoint. The resumed stage
    does the rest and ends with the rows of the uninterrupted run."""
    path = chat_pipeline(tmp_path)
    run = tmp_path / "run"
    for copied in ("pre", "sft", "rm", "samples", "ranked"):
        shutil.copytree(tiny_chat_run / copied, run / copied)
    dirs = StageDirs(run / stage)
    earlier = complete_checkpoints(dirs)[0]
    assert 0 < earlier.step < 32
    for later in complete_checkpoints(dirs)[1:]:
        shutil.rmtree(later.path)
    dirs.manifest.unlink()
    shutil.rmtree(dirs.artifact)
    done = rlhf("run", path, "--only", stage)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[{stage}] resuming from step-{earlier.step:06d}" in done.stdout
    assert (dirs.artifact / name).read_bytes() == (tiny_chat_run / stage / "artifact" / name).read_bytes()
    assert read_manifest(dirs)["resumed_from_step"] == earlier.step
