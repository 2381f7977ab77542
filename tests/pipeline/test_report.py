"""The run report, metric histories, progress on a terminal, `rlhf status` states and `rlhf clean`."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from core.checkpoints import complete_checkpoints
from core.history import append_record, attempt_marker, read_history, series
from core.layout import StageDirs
from core.manifest import read_manifest
from core.numbers import fmt
from pipeline.registry import KINDS
from tests.helpers import chromium_or_skip, pretrain_stage, rlhf, status_row, write_pipeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- metric histories -----------------------------------------------------------------------------------


def test_history_drops_what_a_resumed_attempt_redid_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_record(path, {"step": 0, "eval_loss": 9.0})
    append_record(path, attempt_marker(0))
    for step in (10, 20, 30):
        append_record(path, {"step": step, "loss": 10.0 - step / 10})
    append_record(path, {"step": 20, "eval_loss": 8.5})
    append_record(path, attempt_marker(20))  # killed after 30, resumed from the checkpoint at 20
    append_record(path, {"step": 30, "loss": 6.5})
    with open(path, "a") as f:
        f.write('{"step": 40, "lo')  # torn by a crash
    history = read_history(path)
    assert [(r["step"], sorted(set(r) - {"time"})) for r in history] == [
        (0, ["eval_loss", "step"]), (10, ["loss", "step"]), (20, ["loss", "step"]), (20, ["eval_loss", "step"]),
        (30, ["loss", "step"])]
    assert series(history, "loss") == ([10, 20, 30], [9.0, 8.0, 6.5])  # step 30 from the resumed attempt
    assert read_history(tmp_path / "missing.jsonl") == []


def test_history_without_markers_keeps_the_last_record_of_a_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for record in ({"step": 5, "loss": 2.0}, {"step": 5, "loss": 1.5}, {"step": 5, "eval_loss": 3.0}):
        append_record(path, record)
    assert series(read_history(path), "loss") == ([5], [1.5])
    assert series(read_history(path), "eval_loss") == ([5], [3.0])


# --- the report of a real run ---------------------------------------------------------------------------


def _png_pixels(path: Path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    return matplotlib.image.imread(path)


@pytest.fixture(scope="module")
def report(tiny_chat_run):
    """(report dir, report.md text, report.json, manifests by stage) of the tiny chat run, rewritten by `rlhf report`."""
    out = tiny_chat_run / "report"
    assert (out / "report.html").is_file()  # written by `rlhf run` itself
    result = rlhf("report", str(tiny_chat_run))
    assert result.returncode == 0, result.stdout + result.stderr
    stages = {p.parent.name: read_manifest(StageDirs(p.parent)) for p in tiny_chat_run.glob("*/manifest.json")}
    declared = yaml.safe_load((tiny_chat_run.parent / "chat.yaml").read_text())["stages"]
    assert set(stages) == set(declared)
    return out, (out / "report.md").read_text(), json.loads((out / "report.json").read_text()), stages


@pytest.mark.slow
def test_report_has_a_real_plot_per_stage_and_for_time(report):
    out, md, summary, stages = report
    # stages whose kind draws curves, and evaluations, get a plot each (sample and rank have none)
    curves = {name for name, manifest in stages.items()
              if KINDS[manifest["kind"]].panels or manifest["metrics"].get("policies")}
    assert {"pre", "sft", "rm", "ppo", "judged"} <= curves
    assert set(summary["plots"]) == {f"plots/{name}.png" for name in curves} | {"plots/time.png"}
    for plot in summary["plots"]:
        pixels = _png_pixels(out / plot)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 300 and pixels.std() > 0.05, plot
        assert f"]({plot})" in md


@pytest.mark.slow
def test_report_summary_shows_each_stage_headline_metrics_as_the_manifest_has_them(report):
    _, md, summary, stages = report
    for name, manifest in stages.items():
        assert summary["stages"][name]["metrics"] == {k: v for k, v in manifest["metrics"].items() if k != "samples"}
        # the verdict first, with each trained stage's settings
        assert md.index("## Verdict") < md.index("## Summary")
        assert f"| {name} | {manifest['kind']} |" in md[md.index("Hyperparameters"):md.index("## Summary")]
        summary_section = md[md.index("## Summary"):]
        row = next(line for line in summary_section.splitlines() if line.startswith(f"| {name} |"))
        assert "| fresh |" in row
        headline = [key for key in KINDS[manifest["kind"]].headline if manifest["metrics"].get(key) is not None]
        assert headline, name
        for key in headline:
            assert f"{key} {fmt(manifest['metrics'][key])}" in row, (key, row)


@pytest.mark.slow
def test_report_says_whose_verdict_the_ppo_win_rate_is_and_shows_what_does_not_flatter(report):
    _, md, _, stages = report
    section = md.split("## ppo (ppo)")[1].split("\n## ")[0]
    assert "the reward model PPO optimized" in section and "flatters PPO" in section
    metrics = stages["ppo"]["metrics"]
    assert f"95% interval {100 * metrics['eval/win_rate_low']:.0f}%" in section
    assert f"distinct-2 SFT {metrics['eval/sft_distinct_2']:.4g}" in section


@pytest.mark.slow
def test_report_sample_table_holds_the_scores_of_ppo_manifest(report):
    _, md, _, stages = report
    table = md.split("### ppo: base → sft → ppo")[1].split("\n#")[0]  # an eval's sample table has the same prompts
    for sample in stages["ppo"]["metrics"]["samples"]:
        row = next(line for line in table.splitlines() if line.startswith(f"| {sample['prompt'].replace('|', chr(92) + '|')} |"))
        for column in ("sft_score", "ppo_score"):
            assert f"| {sample[column]:.4g} |" in row


@pytest.mark.slow
def test_every_stage_writes_tensorboard_events_under_its_logs(tiny_chat_run, report):
    for name in report[3]:  # so `tensorboard --logdir RUN_DIR` shows them all
        assert list((tiny_chat_run / name / "logs" / "tensorboard").rglob("events.out.tfevents.*")), name


@pytest.mark.slow
def test_every_kind_that_generates_logs_a_table_of_its_answers_to_tensorboard(tiny_chat_run):
    tables = {"samples": "samples", "ranked": "rankings", "judged": "answers", "ppo": "heldout/answers"}
    for stage, table in tables.items():
        texts = tensorboard_texts(tiny_chat_run / stage / "logs" / "tensorboard", tag=f"{table}/text_summary")
        assert texts, (stage, table)
        header, rule, *rows = texts[0].splitlines()
        assert header.startswith("| prompt |") and rule.startswith("|---|")
        assert 1 <= len(rows) <= 8  # tracking.table_rows' default
    ppo_points = tensorboard_texts(tiny_chat_run / "ppo" / "logs" / "tensorboard", tag="heldout/answers/text_summary")
    assert len(ppo_points) >= 2 and "judge score" in ppo_points[0].splitlines()[0]  # before and along the way


def tensorboard_texts(directory: Path, *, tag: str) -> list[str]:
    """Every text logged under `tag` in the event files below `directory`, read back by tensorboard itself."""
    texts = []
    for events in sorted(directory.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["tensors"]:
            texts += [event.tensor_proto.string_val[0].decode() for event in accumulator.Tensors(tag)]
    return texts


@pytest.mark.slow
def test_report_lineage_names_every_fingerprint_and_data_file_hash(report):
    _, md, _, stages = report
    for manifest in stages.values():
        assert manifest["fingerprint"] in md
        for data_file in manifest["data_files"]:
            assert data_file["sha256"][:16] in md


@pytest.mark.slow
def test_report_of_several_runs_compares_their_settings_metrics_verdicts_and_curves(tiny_chat_run, tmp_path, corpus):
    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus, max_steps=4, save_every=10)})
    for name, rate in (("a", "1e-3"), ("b", "3e-3")):
        done = rlhf("run", path, "--set", f"run_dir={tmp_path / name}", "--set", f"stages.pre.train.learning_rate={rate}")
        assert done.returncode == 0, done.stdout + done.stderr
    assert "give --to DIR" in rlhf("report", tmp_path / "a", tmp_path / "b").stderr
    made = rlhf("report", tmp_path / "a", tmp_path / "b", tiny_chat_run, "--to", tmp_path / "cmp")
    assert made.returncode == 0, made.stdout + made.stderr
    text = (tmp_path / "cmp" / "compare.md").read_text()
    settings = text[text.index("## Settings"):text.index("## Headline metrics")]
    assert re.search(r"\| pre \| train\.learning_rate \| 0\.001 \| 0\.003 \| ", settings), settings
    losses = [fmt(read_manifest(StageDirs(tmp_path / n / "pre"))["metrics"]["eval/loss"]) for n in ("a", "b")]
    assert f"| pre | eval/loss | {losses[0]} | {losses[1]} | " in text
    assert "## judged: the verdict in each run" in text  # the eval stage of the one run that has it
    assert (tmp_path / "cmp" / "plots" / "pre.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "cmp" / "compare.html").is_file()


@pytest.mark.slow
def test_report_html_renders_every_image_in_a_browser(report, tmp_path):
    out, _, summary, _ = report
    chromium = chromium_or_skip()
    # every image decodes in the browser: a copy of the page with a check appended reports the count
    checked = tmp_path / "checked.html"
    checked.write_text((out / "report.html").read_text().replace("</body>", (
        "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
        "document.body.setAttribute('data-images', imgs.length + '/' + "
        "imgs.filter(i => i.complete && i.naturalWidth > 0).length); });</script></body>")))
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(browser + ["--virtual-time-budget=5000", "--dump-dom", checked.as_uri()], capture_output=True,
                         text=True, timeout=120)
    images = len(summary["plots"])
    assert f'data-images="{images}/{images}"' in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run(browser + ["--window-size=1200,1600", f"--screenshot={shot}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = _png_pixels(shot)
    assert pixels.std() > 0.05  # not a blank page


# --- status states, progress on a terminal, clean ----------------------------------------------------------


def _run_on_a_terminal(args: list[str], timeout: float = 300) -> str:
    """Run `python -m ARGS` with a pseudo-terminal as stdout and stderr; return everything it wrote,
    without colour codes."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=follower, stderr=follower,
                            env=dict(os.environ, COLUMNS="160"))
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(leader)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    assert proc.returncode == 0, screen[-3000:]
    return screen


@pytest.mark.slow
def test_progress_bar_on_a_terminal_not_in_the_log_then_clean(tmp_path, corpus):
    # enough steps that training outlasts a few of the runner's 0.5 s polls of progress.json on a fast CPU
    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus, max_steps=300, save_every=100)})
    screen = _run_on_a_terminal(["pipeline.cli", "run", str(path)])
    # the runner draws a bar from progress.json (steps, loss, ETA) on the terminal; the log gets lines only
    assert re.search(r"pre ━+.* [1-2]?\d?\d/300 loss [\d.]+ .*eta \d+s", screen), screen[-3000:]
    log = (tmp_path / "run" / "pre" / "logs" / "attempt-1.log").read_text()
    assert "━" not in log and "\x1b[" not in log and "[pre] step 300/300" in log
    progress = json.loads((tmp_path / "run" / "pre" / "progress.json").read_text())
    assert progress["state"] == "done" and progress["step"] == progress["total"] == 300
    assert "fresh" in status_row(path, "pre") and "eval/loss" in status_row(path, "pre")

    # clean: a dry run removes nothing; --keep-artifacts removes checkpoints and the stage stays fresh
    stage = StageDirs(tmp_path / "run" / "pre")
    assert len(complete_checkpoints(stage)) == 2
    dry = rlhf("clean", str(tmp_path / "run"), "--keep-artifacts", "--dry-run")
    assert dry.returncode == 0 and "pre/checkpoints/step-000300" in dry.stdout and "would be removed" in dry.stdout
    assert len(complete_checkpoints(stage)) == 2
    kept = rlhf("clean", str(tmp_path / "run"), "--keep-artifacts")
    assert kept.returncode == 0 and not complete_checkpoints(stage)
    assert "fresh" in status_row(path, "pre")
    # without --keep-artifacts the artifacts go too, only with --yes; then the stage is stale and rebuilt
    refused = rlhf("clean", str(tmp_path / "run"))
    assert refused.returncode == 2 and "--yes" in refused.stderr and stage.artifact.is_dir()
    removed = rlhf("clean", str(tmp_path / "run"), "--yes")
    assert removed.returncode == 0 and not stage.artifact.exists() and stage.manifest.is_file()
    assert "stale" in status_row(path, "pre") and "artifact was removed" in status_row(path, "pre")

    # a stage launched by hand on a terminal draws its own bar
    screen = _run_on_a_terminal(["accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                                 "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "stages.pretrain",
                                 "--config", str(path), "--stage", "pre"])
    assert re.search(r"pre ━+.* [1-2]?\d?\d/300 loss [\d.]+ .*eta \d+s", screen), screen[-3000:]
    assert stage.artifact.is_dir()


def test_status_reads_running_killed_and_failed_attempts_from_progress(tmp_path, corpus):
    from core.progress import new_attempt, write_progress
    from pipeline.config import load_pipeline
    from pipeline.plan import stage_states
    from pipeline.status import status_rows

    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus)})
    pipeline = load_pipeline(path)
    status = stage_states(pipeline)["pre"]
    view = lambda: status_rows(pipeline)[0]  # noqa: E731
    assert (view().state, view().detail) == ("missing", "never run")

    running = dict(new_attempt(status.fingerprint), total=40, step=5, first_step=0, training_since=time.time() - 10,
                   metrics={"loss": 4.5})
    write_progress(status.dirs, running)
    assert view().state == "running" and view().detail.startswith("step 5/40, eta") and view().metrics == {"loss": 4.5}

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_progress(status.dirs, dict(running, pid=int(gone.stdout)))  # its process was killed
    assert view().state == "interrupted" and "stopped at step 5; restarts from step 0" in view().detail

    write_progress(status.dirs, dict(running, state="failed", error="RuntimeError: out of memory", ended_at=time.time()))
    assert view().state == "failed" and view().detail.startswith("RuntimeError: out of memory; restarts from step 0")

    write_progress(status.dirs, dict(running, fingerprint="0" * 64))  # an attempt under another config
    assert view().state == "missing"


def test_status_watch_redraws_while_a_run_holds_the_directory(tmp_path, corpus):
    from core.lock import RunLock

    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus)})
    watch = [sys.executable, "-m", "pipeline.cli", "status", str(path), "--watch", "0.2"]
    idle = subprocess.run(watch, capture_output=True, text=True, timeout=60)
    assert idle.returncode == 0 and "no run is going" in idle.stdout  # nothing to watch: one frame, then out
    with RunLock(tmp_path / "run"):
        proc = subprocess.Popen(watch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert proc.poll() is None  # still watching while the run directory is locked
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "no run is going" in out, err
