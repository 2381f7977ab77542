"""The resumable row loop of stages that produce rows (samples, rankings, an eval's answers) rather than
weights: the rows are computed a chunk at a time, each process its share, and committed so far.

Each checkpoint `step-NNNNNN` holds every row up to step N (a row per prompt, or per policy, in order),
committed atomically like any checkpoint, so a killed stage resumes after its last committed row and ends
with the rows an uninterrupted run writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, TypeVar

from accelerate import PartialState
from accelerate.utils import gather_object

from core.checkpoints import commit_checkpoint
from stages.common.entry import StageContext

ROWS_FILE = "rows.jsonl"
Row = TypeVar("Row")


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


def resumable_rows(ctx: StageContext, *, count: int, chunk: int, rows_of: Callable[[range], list[dict]],
                   announce: Callable[[list[dict]], str], unit: str) -> list[dict]:
    """Rows 0..count-1, `chunk` at a time: `rows_of(indices)` (called on every process; collective) gives the
    rows of those indices in order, and the main process commits every row so far after each chunk. A resumed
    attempt starts after the rows its checkpoint holds. `announce(rows_so_far)` is printed once (main process);
    progress counts rows as `unit`."""
    state = PartialState()
    rows = rows_so_far(ctx)
    if state.is_main_process:
        print(f"[{ctx.name}] {announce(rows)}", flush=True)
    ctx.progress.start(count, len(rows))
    for start in range(len(rows), count, chunk):
        rows += rows_of(range(start, min(start + chunk, count)))
        if state.is_main_process:
            commit_rows(ctx, rows)
        state.wait_for_everyone()
        ctx.progress.update(len(rows), {unit: len(rows)})
    return rows


def shared_work(indices: range | list[int], work: Callable[[list[int]], list[Row]]) -> list[Row]:
    """`work` done on this process's share of `indices` (every num_processes-th), gathered from every process
    in index order (collective: every process calls it)."""
    state = PartialState()
    mine = list(indices)[state.process_index :: state.num_processes]
    done = list(zip(mine, work(mine) if mine else []))
    return [result for _, result in sorted(gather_object(done), key=lambda item: item[0])]
