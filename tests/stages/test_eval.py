"""The eval kind: policies answer the same held-out prompts, an independent judge scores them, and the
manifest holds judge score, win rate, KL, length, stop rate and distinct-2 per policy with intervals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoModelForSequenceClassification

from core.checkpoints import complete_checkpoints
from core.errors import InputError
from core.layout import StageDirs
from core.manifest import read_manifest
from stages.common.chat import load_chat_tokenizer
from stages.common.scoring import score_chats
from stages.eval.stage import judge_independence
from tests.helpers import DATA, chat_pipeline, rlhf

POLICIES = ["sft", "ppo", "ppo_lora"]


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_policy_answers_every_prompt_and_the_judge_scores_them_as_a_plain_classifier_does(tiny_chat_run):
    answers = rows(tiny_chat_run / "judged" / "artifact" / "answers.jsonl")
    held_out = [json.loads(line)["prompt"] for line in (DATA / "sft" / "chatterbot" / "heldout.jsonl").read_text().splitlines()]
    assert [row["prompt"][-1]["content"] for row in answers] == list(dict.fromkeys(held_out))[:24]
    assert all(list(row["answers"]) == POLICIES == list(row["scores"]) for row in answers)
    judge = AutoModelForSequenceClassification.from_pretrained(tiny_chat_run / "rm_own" / "artifact").eval()
    tokenizer = load_chat_tokenizer(tiny_chat_run / "rm_own" / "artifact", "auto")
    for row in answers[:3]:
        expected = score_chats(judge, tokenizer, [row["prompt"]] * 3, answers=[row["answers"][n] for n in POLICIES],
                               max_length=64, batch_size=3, device="cpu").tolist()
        assert [row["scores"][n] for n in POLICIES] == pytest.approx(expected, abs=1e-5)
    evaluation = json.loads((tiny_chat_run / "judged" / "artifact" / "evaluation.json").read_text())
    assert evaluation["judge_fingerprint"] == read_manifest(StageDirs(tiny_chat_run / "rm_own"))["fingerprint"]


def test_the_metrics_compare_each_policy_with_the_baseline_with_intervals(tiny_chat_run):
    metrics = read_manifest(StageDirs(tiny_chat_run / "judged"))["metrics"]
    answers = rows(tiny_chat_run / "judged" / "artifact" / "answers.jsonl")
    table = {entry["name"]: entry for entry in metrics["policies"]}
    assert list(table) == POLICIES and metrics["eval/baseline"] == "sft" and metrics["eval/prompts"] == 24
    # the baseline against itself: every prompt a tie; its KL to itself (the reference) exactly 0
    assert table["sft"]["win_rate"] == 0.5 and table["sft"]["kl"] == 0.0
    assert table["ppo"]["kl"] > 0 and table["ppo_lora"]["kl"] > 0  # PPO moved away from the SFT policy
    for name, entry in table.items():
        scores = [row["scores"][name] for row in answers]
        assert entry["judge_score"] == pytest.approx(sum(scores) / len(scores))
        wins = [1.0 if row["scores"][name] > row["scores"]["sft"] else 0.5 if row["scores"][name] == row["scores"]["sft"]
                else 0.0 for row in answers]
        assert entry["win_rate"] == pytest.approx(sum(wins) / len(wins))
        for key in ("judge_score", "win_rate", "kl"):
            assert entry[f"{key}_low"] <= entry[key] <= entry[f"{key}_high"], (name, key)
        assert 0 <= entry["stop_rate"] <= 1 and 1 <= entry["length"] <= 12 and entry["distinct_2"] is not None
        assert metrics[f"eval/{name}/win_rate"] == entry["win_rate"]
    assert metrics["eval/best_policy"] in ("ppo", "ppo_lora")
    assert [s["prompt"] for s in metrics["samples"]] == [row["prompt"][-1]["content"] for row in answers[:3]]


def test_a_copy_of_a_policys_proxy_as_judge_is_refused_when_the_stage_starts(tmp_path, tiny_chat_run):
    """A copy of the proxy reward model under another stage name passes the pipeline check, not this one:
    the judge is compared with what each policy was optimised against by its weights."""
    shutil.copytree(tiny_chat_run / "rm", tmp_path / "rm_copy")
    spec = json.loads((tiny_chat_run / "judged" / "spec.json").read_text())
    spec["inputs"]["judge"] = {"stage": "rm_copy", "artifact": str(tmp_path / "rm_copy" / "artifact")}
    config = SimpleNamespace(judge=SimpleNamespace(kind="judge"))
    ctx = SimpleNamespace(name="judged", spec=spec, config=config, inputs={"judge": spec["inputs"]["judge"]["artifact"]},
                          input_manifest=lambda role: read_manifest(StageDirs(Path(spec["inputs"][role]["artifact"]).parent)))
    with pytest.raises(InputError, match="optimised policy 'ppo' against"):
        judge_independence(ctx, {"sft": "sft", "ppo": "ppo"})
    # the independent judge this pipeline ships passes
    spec["inputs"]["judge"] = {"stage": "rm_own", "artifact": str(tiny_chat_run / "rm_own" / "artifact")}
    ctx.inputs = {"judge": spec["inputs"]["judge"]["artifact"]}
    assert judge_independence(ctx, {"sft": "sft", "ppo": "ppo"}) == {"sft": False, "ppo": False}


def test_an_interrupted_eval_resumes_after_the_last_policy_it_finished(tmp_path, tiny_chat_run):
    """What a SIGKILL after an early policy leaves: its checkpoint, no manifest, no artifact. The resumed
    stage answers with the other policies and ends with the uninterrupted run's answers."""
    path = chat_pipeline(tmp_path)
    run = tmp_path / "run"
    for copied in ("pre", "sft", "rm", "ppo", "ppo_lora", "samples", "ranked", "rm_own", "judged"):
        shutil.copytree(tiny_chat_run / copied, run / copied)
    dirs = StageDirs(run / "judged")
    first = complete_checkpoints(dirs)[0]
    assert 0 < first.step < len(POLICIES)
    for later in complete_checkpoints(dirs)[1:]:
        shutil.rmtree(later.path)
    dirs.manifest.unlink()
    shutil.rmtree(dirs.artifact)
    done = rlhf("run", path, "--only", "judged")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[judged] resuming from step-{first.step:06d}" in done.stdout
    log = (dirs.logs / "attempt-2.log").read_text()
    assert f"resuming after policy {POLICIES[first.step - 1]}" in log
    assert read_manifest(dirs)["resumed_from_step"] == first.step
    name = "answers.jsonl"
    assert (dirs.artifact / name).read_bytes() == (tiny_chat_run / "judged" / "artifact" / name).read_bytes()
