"""The sample kind's artifact, as the orchestrator and the labeling page read it (torch-free): samples.jsonl,
a row per prompt `{"prompt": messages, "answers": [K texts], "stopped", "lengths", "reference"}`."""

from __future__ import annotations

import json
from pathlib import Path

from core.labels import sample_key

#: the sample kind's artifact file
SAMPLES_FILE = "samples.jsonl"


def read_samples(path: Path) -> list[dict]:
    """The rows of a samples.jsonl ([] when it is not there yet)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sample_keys(path: Path) -> list[str]:
    """The label key of every sampled prompt (core.labels.sample_key)."""
    return [sample_key(row["prompt"], row["answers"]) for row in read_samples(path)]
