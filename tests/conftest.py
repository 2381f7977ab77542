"""Fixtures every tier shares, and the tier markers: `-m unit` (pure functions and configs, seconds),
`-m stages` (tiny real trainings of one stage), `-m pipeline` (the orchestrator, report and benchmarks),
`-m distributed` (two processes under DDP and DeepSpeed), `-m security` (hostile run directories and requests)."""

from __future__ import annotations

import os
from pathlib import Path

# Under pytest-xdist each worker, and every stage it launches, computes on one thread: two workers with
# torch's (or accelerate's) thread per core each oversubscribe the cores, and OpenMP's spinning threads then
# ran a 20 s PPO stage for minutes. Set before anything imports torch; the runner leaves a set value alone.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from filelock import FileLock

from tests.helpers import chat_pipeline, rlhf, small_corpus

TIERS = ("unit", "stages", "pipeline", "distributed", "security", "vllm")


def pytest_collection_modifyitems(items):
    """Mark every test with its tier, the folder it sits in."""
    for item in items:
        tier = Path(item.fspath).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A small real corpus file in the test's temp dir."""
    return small_corpus(tmp_path)


@pytest.fixture(scope="session")
def tiny_chat_run(tmp_path_factory, worker_id) -> Path:
    """The run directory of a completed tiny pretrain -> sft (+ LoRA) -> reward -> ppo pipeline. Under
    pytest-xdist the workers share one: the first builds it under a file lock, the others wait for it."""
    if worker_id == "master":
        directory = tmp_path_factory.mktemp("chat")
    else:
        directory = tmp_path_factory.getbasetemp().parent / "chat"
        directory.mkdir(exist_ok=True)
    built = directory / "built"
    with FileLock(str(directory) + ".lock"):
        if not built.exists():
            result = rlhf("run", chat_pipeline(directory))
            assert result.returncode == 0, result.stdout + result.stderr
            built.touch()
    return directory / "run"
