"""The sample kind's artifact, as the rank kind and its labeling page read it (torch-free): samples.jsonl,
a row per prompt `{"prompt": messages, "answers": [K texts], "stopped", "lengths", "reference"}`, and the
key that names a prompt with its answers (people's labels refer to it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sample_key(prompt: list[dict], answers: list[str]) -> str:
    """The identity of one prompt with its answers."""
    text = json.dumps([prompt, answers], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


#: the sample kind's artifact file
SAMPLES_FILE = "samples.jsonl"


def read_samples(path: Path) -> list[dict]:
    """The rows of a samples.jsonl ([] when it is not there yet)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sample_keys(path: Path) -> list[str]:
    """The label key of every sampled prompt (sample_key)."""
    return [sample_key(row["prompt"], row["answers"]) for row in read_samples(path)]
