"""People's labels of sampled answers (torch-free): the file `rlhf label` appends to and the rank stage reads.

One JSON line per submission, `{"key", "ranks" | "skip" | "flag", "time"}`, where `key` identifies a prompt
and its K answers (stages/sample/artifact.py: sample_key) (so labels of answers that have since been re-sampled no longer match anything). A line is
written with one `write` on a file opened for appending, then fsynced: a killed server or a closed page loses
at most the submission in flight, never an earlier one, and a torn last line is ignored when read. The latest
submission for a key wins, so a person can correct a label.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path


def append_label(path: Path, record: dict) -> None:
    """Append one submission durably (see the module docstring). After a torn last line (a writer killed
    mid-write) the record starts a line of its own, so the torn one cannot swallow it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps({**record, "time": round(time.time(), 3)}, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        while line:  # a short write (a full disk, a signal) leaves the rest to write, never silently dropped
            line = line[os.write(fd, line):]
        os.fsync(fd)
    finally:
        os.close(fd)


def submissions(path: Path) -> Iterator[dict]:
    """Every submission in the file, oldest first; torn or unreadable lines are skipped."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("key"), str):
            yield record


def label_views(path: Path) -> tuple[dict[str, dict], dict[str, dict[str, dict]]]:
    """From one read of the file: (key -> the latest submission for it, key -> labeler -> that person's latest
    submission for it; a label without a name counts as one person, "")."""
    latest: dict[str, dict] = {}
    people: dict[str, dict[str, dict]] = {}
    for record in submissions(path):
        latest[record["key"]] = record
        people.setdefault(record["key"], {})[str(record.get("labeler") or "")] = record
    return latest, people


def read_labels(path: Path) -> dict[str, dict]:
    """key -> the latest submission for it."""
    return label_views(path)[0]


def latest_by_person(path: Path) -> dict[str, dict[str, dict]]:
    """key -> labeler -> that person's latest submission for it."""
    return label_views(path)[1]


def ranks_problem(ranks, k: int) -> str | None:
    """Why `ranks` cannot rank K answers (1 = best, ties share a number, at least two distinct), or None."""
    if not isinstance(ranks, list) or len(ranks) != k:
        return f"expected {k} ranks, one per answer"
    if not all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= k for r in ranks):
        return f"ranks must be whole numbers from 1 (best) to {k}"
    if len(set(ranks)) < 2:
        return "every answer has the same rank: that says nothing (skip the prompt instead)"
    return None


def is_ranked(record: dict | None) -> bool:
    """A submission that ranks the answers (not a skip or a flag)."""
    return bool(record) and isinstance(record.get("ranks"), list) and not record.get("skip") and not record.get("flag")


def labeled_count(labels: dict[str, dict], keys: list[str]) -> int:
    """How many of the samples (by key) carry a ranking."""
    return sum(is_ranked(labels.get(key)) for key in keys)
