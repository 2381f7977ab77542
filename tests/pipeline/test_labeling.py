"""People label: `rlhf run` stops cleanly at a rank stage whose labeler is human, `rlhf label` serves the page
(driven here by clicks in headless Chromium) or exchanges JSONL, no submission is lost to a killed server,
and once enough prompts are ranked the run goes on downstream."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.layout import StageDirs
from core.manifest import read_manifest
from measures.agreement import pairwise_agreement
from stages.rank.labels import append_label, read_labels
from stages.rank.ordering import ranks_by_score
from stages.sample.artifact import sample_key
from tests.helpers import chat_pipeline, chromium_or_skip, ranking_subset, reward_stage, rlhf

pytestmark = pytest.mark.slow

ONLY = ("--only", "samples", "people", "rm_people")
GUIDELINES = "Rank by how well the answer follows the instruction."


@pytest.fixture
def awaiting(tmp_path, tiny_chat_run) -> tuple[Path, Path]:
    """(pipeline file, run dir): the chat pipeline's samples (copied, fresh), `people` (rank, labeler human,
    min_labeled 3) and `rm_people` (reward on their rankings), after an `rlhf run` that stopped for labels."""
    path = chat_pipeline(tmp_path)
    config = yaml.safe_load(path.read_text())
    own = reward_stage("sft", ranking_subset(tmp_path / "rankings.jsonl"), max_steps=4, save_every=10)
    own["inputs"]["rankings"] = "people"
    own["data"]["train"] = []
    config["stages"]["people"] = {"kind": "rank", "inputs": {"samples": "samples"},
                                  "labeler": {"kind": "human", "min_labeled": 3, "double_labeled": 1,
                                              "guidelines": GUIDELINES}}
    config["stages"]["rm_people"] = own
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    for copied in ("pre", "sft", "samples"):
        shutil.copytree(tiny_chat_run / copied, run / copied)
    stopped = rlhf("run", path, *ONLY)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stage people: awaiting labels 0/3" in stopped.stdout
    assert "held back: rm_people" in stopped.stdout
    assert read_manifest(StageDirs(run / "rm_people")) is None
    assert "awaiting labels 0/3" in rlhf("status", run).stdout
    return path, run


def samples_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "samples" / "artifact" / "samples.jsonl").read_text().splitlines()]


def serve(run: Path) -> tuple[subprocess.Popen, str]:
    """`rlhf label RUN --port 0` started; (the process, the page's address) from its first line."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "label", str(run), "--port", "0"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()
    assert "open http://127.0.0.1:" in line, line
    return proc, line.split("open ")[1].split()[0]


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def rank_by_clicks(page, ranks: list[int]) -> None:
    before = page.get_attribute("body", "data-labeled")
    for i, rank in enumerate(ranks):
        page.click(f'li.answer[data-index="{i}"] button[data-rank="{rank}"]')
    page.click("#submit")
    page.wait_for_function(f"document.body.dataset.labeled !== '{before}'")


def rank_by_keys(page, ranks: list[int]) -> None:
    """The number keys rank the highlighted answer and move on; Enter submits (then the next prompt shows)."""
    before = page.get_attribute("#main", "data-key")
    for rank in ranks:
        page.keyboard.press(str(rank))
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelector('#main').dataset.key !== '{before}' || "
                           "document.querySelector('#main').hidden")


def shown_key(page) -> str:
    page.wait_for_selector("#main:not([hidden])")
    return page.get_attribute("#main", "data-key")


def test_people_rank_on_the_page_and_a_killed_server_loses_nothing(awaiting):
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = chromium_or_skip()
    path, run = awaiting
    samples = samples_of(run)
    keys = [sample_key(s["prompt"], s["answers"]) for s in samples]
    labels_file = StageDirs(run / "people").labels
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(bypass_csp=True)  # Playwright's wait_for_function evaluates strings in the page
        proc, url = serve(run)
        try:
            page.goto(url)
            page.fill("#labeler", "ana")  # every label names who gave it
            assert shown_key(page) == keys[0]
            assert page.locator("li.answer").count() == 4
            assert "0 ranked" in page.text_content("#progress")
            assert page.text_content("#guidelines") == GUIDELINES
            rank_by_clicks(page, [2, 1, 1, 3])  # a tie: the second and third answers are as good
            assert shown_key(page) == keys[1]
            page.click("#skip")
            page.wait_for_function(f"document.querySelector('#main').dataset.key === '{keys[2]}'")
            rank_by_clicks(page, [1, 2, 3, 4])
            # a second person is handed the doubly-labeled prompt ana ranked, never the one she holds now
            other = browser.new_page(bypass_csp=True)
            other.goto(url)
            other.fill("#labeler", "bo")
            other.press("#labeler", "Tab")  # leaving the field asks for bo's own prompt
            other.wait_for_function(f"document.querySelector('#main').dataset.key === '{keys[0]}'")
            rank_by_keys(other, [1, 2, 3, 4])
            other.wait_for_function("document.querySelector('#team').textContent.includes('agreement')")
            assert "ranked by: ana 2, bo 1; agreement on 1 prompts ranked twice" in other.text_content("#team")
        finally:
            kill(proc)  # mid-way: 2 of the 3 needed ranked
        labels = read_labels(labels_file)  # the latest label of a prompt is the one the stage trains on
        assert labels[keys[0]]["ranks"] == [1, 2, 3, 4] and labels[keys[1]]["skip"] is True
        assert labels[keys[0]]["labeler"] == "bo" and labels[keys[1]]["labeler"] == "ana"
        assert labels[keys[2]]["ranks"] == [1, 2, 3, 4] and len(labels) == 3
        assert "awaiting labels 2/3 (ana 2, bo 1)" in rlhf("status", run).stdout

        proc, url = serve(run)  # the next visit goes on where the last one stopped
        try:
            page.goto(url)
            page.fill("#labeler", "ana")
            assert shown_key(page) == keys[3]
            assert "2 ranked (3 of 32 handled)" in page.text_content("#progress")
            page.fill("#flag-reason", "not a real question")
            page.click("#flag")
            page.wait_for_function(f"document.querySelector('#main').dataset.key === '{keys[4]}'")
            rank_by_keys(page, [4, 3, 2, 1])
        finally:
            kill(proc)
        browser.close()
    labels = read_labels(labels_file)
    assert labels[keys[3]]["flag"] == "not a real question" and labels[keys[4]]["ranks"] == [4, 3, 2, 1]

    done = rlhf("run", path, *ONLY)  # enough labels: the rank stage and the reward model downstream run
    assert done.returncode == 0, done.stdout + done.stderr
    people = read_manifest(StageDirs(run / "people"))["metrics"]
    assert people["rank/labeled_by_people"] == 3 and people["rank/skipped_by_people"] == 1
    assert people["rank/flagged_by_people"] == 1
    assert (people["rank/labelers"], people["rank/agreement_prompts"]) == (2, 1)
    assert people["rank/agreement_pairwise"] == pairwise_agreement([2, 1, 1, 3], [1, 2, 3, 4])
    rankings = [json.loads(line) for line in (run / "people" / "artifact" / "rankings.jsonl").read_text().splitlines()]
    clicked = {0: [1, 2, 3, 4], 2: [1, 2, 3, 4], 4: [4, 3, 2, 1]}
    assert [r["prompt"] for r in rankings] == [samples[i]["prompt"] for i in clicked]
    for row, (i, ranks) in zip(rankings, clicked.items()):
        kept = [j for j, answer in enumerate(samples[i]["answers"]) if answer.strip()]  # empty answers left out
        assert row["answers"] == [samples[i]["answers"][j] for j in kept]
        assert row["ranks"] == ranks_by_score([-float(ranks[j]) for j in kept])  # the clicks, ties kept
    assert read_manifest(StageDirs(run / "rm_people"))["inputs"]["rankings"]["stage"] == "people"
    # a new label changes the rankings: the rank stage is stale again (and so what learns from it)
    append_label(StageDirs(run / "people").labels, {"key": keys[5], "ranks": [1, 2, 3, 4]})
    rows = {line.split()[0]: line for line in rlhf("plan", path).stdout.splitlines() if line.strip()}
    assert "stale" in rows["people"] and "stale" in rows["rm_people"], rows
