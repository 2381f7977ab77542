"""Checkpoints of stages that produce rows (samples, rankings) rather than weights: the rows written so far.

Each checkpoint `step-NNNNNN` holds every row up to step N (a row per prompt, in prompt order), committed
atomically like any checkpoint, so a killed stage resumes after its last committed row and ends with the
rows an uninterrupted run writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.checkpoints import commit_checkpoint
from stages.common.entry import StageContext

ROWS_FILE = "rows.jsonl"


def write_rows(path: Path, rows: list[dict]) -> None:
    """Rows as JSONL (UTF-8, one object per line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def read_rows(path: Path) -> list[dict]:
    """The rows of a JSONL file this module wrote."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def rows_so_far(ctx: StageContext) -> list[dict]:
    """The rows of the checkpoint this attempt resumes from (none for a fresh start)."""
    return read_rows(ctx.resume_from.path / ROWS_FILE) if ctx.resume_from is not None else []


def commit_rows(ctx: StageContext, rows: list[dict], *, keep_last: int = 2) -> None:
    """The rows so far as checkpoint step-len(rows). Main process only."""
    written = ctx.dirs.checkpoints / f"incoming-{len(rows):06d}"
    write_rows(written / ROWS_FILE, rows)
    commit_checkpoint(ctx.dirs, written, step=len(rows), fingerprint=ctx.fingerprint, stage=ctx.name, keep_last=keep_last)
