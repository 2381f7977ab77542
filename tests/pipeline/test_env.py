"""`rlhf --version` and `rlhf env`: what a bug report needs, read from the installed packages and devices."""

from __future__ import annotations

from importlib import metadata

from core.engines import vllm_problem
from tests.helpers import rlhf


def test_version_and_env_name_the_installed_stack():
    version = rlhf("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"rlhf-pipeline {metadata.version('rlhf-pipeline')}"
    env = rlhf("env")
    assert env.returncode == 0, env.stderr
    lines = dict(line.removeprefix("- ").split(": ", 1) for line in env.stdout.splitlines())
    for package in ("torch", "transformers", "trl", "accelerate", "peft", "datasets"):
        assert lines[package] == metadata.version(package), package
    assert not lines["devices"].startswith("unknown")  # torch imported and answered
    problem = vllm_problem()  # whether the vLLM engine can run, and if not why, as `rlhf plan` would refuse it
    assert lines["vllm engine"].startswith("usable, from ") if problem is None else \
        lines["vllm engine"] == f"not usable: {problem}"
