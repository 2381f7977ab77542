"""A stage's metric history (`logs/metrics.jsonl`), read back as one clean series across attempts.

Every attempt of a stage appends to the same file and starts with a marker record
`{"event": "attempt", "step": S}`, S being the step it resumed from (0 for a fresh start). Records of a
previous attempt with a step above S were re-done by the new attempt and are dropped, so a resumed run
reads exactly like an uninterrupted one. Torch-free.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

ATTEMPT_EVENT = "attempt"


def attempt_marker(step: int) -> dict:
    """The record an attempt writes first: it resumes from `step` (0 when it starts afresh)."""
    return {"step": step, "time": round(time.time(), 3), "event": ATTEMPT_EVENT}


def append_record(path: Path, record: dict) -> None:
    """Append one JSON record to a metrics.jsonl file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_history(path: Path) -> list[dict]:
    """The records of `path` in step order, superseded ones dropped; [] if the file does not exist.

    Without attempt markers (or for two records of one step with the same keys) the later record wins.
    A torn last line (the process died while writing it) is ignored.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    kept: dict[tuple, dict] = {}  # (step, keys) -> record
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        if record.get("event") == ATTEMPT_EVENT:
            kept = {key: r for key, r in kept.items() if r["step"] <= record["step"]}
            continue
        key = (record["step"], tuple(sorted(k for k in record if k != "time")))
        kept.pop(key, None)
        kept[key] = record
    return sorted(kept.values(), key=lambda r: r["step"])  # stable: records of one step keep their order


def series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric over a history: the last value logged at each step, skipping records
    without a numeric value."""
    by_step: dict[int, float] = {}
    for record in history:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            by_step[record["step"]] = float(value)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]
