"""A stage's checkpoints: committed atomically as `checkpoints/step-NNNNNN/` with a marker naming the
fingerprint that wrote them, rotated to `keep_last`, and sorted into a resume point."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from core.atomic import atomic_write_json
from core.layout import StageDirs
from core.manifest import read_manifest
from core.removal import remove_inside

CHECKPOINT_MARKER = "rlhf-checkpoint.json"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
#: what this project (and the Trainer under it) writes into checkpoints/: all that a clean-up may delete
_OWN_DIR = re.compile(r"^(step|incoming|checkpoint)-\d+$")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint: its directory, optimizer step and the fingerprint of the run that wrote it."""

    path: Path
    step: int
    fingerprint: str


def checkpoint_dir(dirs: StageDirs, step: int) -> Path:
    """The directory name of the checkpoint at `step`."""
    return dirs.checkpoints / f"step-{step:06d}"


def commit_checkpoint(dirs: StageDirs, written: Path, *, step: int, fingerprint: str, stage: str, keep_last: int) -> Path:
    """Make the fully written directory `written` the complete checkpoint of `step`: write the marker
    (fingerprint, step) into it, rename it to `step-NNNNNN`, then keep only the `keep_last` newest.
    Main process only, after every process has finished writing."""
    atomic_write_json(written / CHECKPOINT_MARKER, {"fingerprint": fingerprint, "step": step, "stage": stage})
    final = checkpoint_dir(dirs, step)
    remove_inside(final, inside=dirs.run_dir)
    os.replace(written, final)
    for old in complete_checkpoints(dirs)[:-keep_last]:
        remove_inside(old.path, inside=dirs.run_dir)
    return final


def complete_checkpoints(dirs: StageDirs) -> list[Checkpoint]:
    """Complete checkpoints, oldest first. A directory without a readable marker is torn and ignored."""
    found = []
    if not dirs.checkpoints.is_dir():
        return found
    for path in dirs.checkpoints.iterdir():
        match = _STEP_DIR.match(path.name)
        if not match:
            continue
        try:
            marker = json.loads((path / CHECKPOINT_MARKER).read_text())
            found.append(Checkpoint(path, int(match.group(1)), str(marker["fingerprint"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(found, key=lambda c: c.step)


def incomplete_checkpoint_dirs(dirs: StageDirs) -> list[Path]:
    """Directories under checkpoints/ named as this project or the Trainer names them that are not complete
    checkpoints (torn writes). Anything else there is not ours and is left alone."""
    if not dirs.checkpoints.is_dir():
        return []
    complete = {c.path for c in complete_checkpoints(dirs)}
    return sorted(p for p in dirs.checkpoints.iterdir()
                  if _OWN_DIR.match(p.name) and (p.is_dir() or p.is_symlink()) and p not in complete)


@dataclass(frozen=True)
class ResumePoint:
    """What a stage does with its checkpoints: resume from one, delete leftovers, or refuse."""

    resume: Checkpoint | None  # latest complete checkpoint written under the current fingerprint
    leftovers: list[Checkpoint]  # written by the run that produced the current (older) manifest
    conflict: Checkpoint | None  # an interrupted run under another config: refuse unless restarted


def resume_point(dirs: StageDirs, current_fingerprint: str) -> ResumePoint:
    """Sort a stage's complete checkpoints by whose they are, relative to the fingerprint about to run."""
    manifest = read_manifest(dirs)
    finished = manifest.get("fingerprint") if manifest else None
    mine, leftovers, others = [], [], []
    for ckpt in complete_checkpoints(dirs):
        if ckpt.fingerprint == current_fingerprint:
            mine.append(ckpt)
        elif ckpt.fingerprint == finished:
            leftovers.append(ckpt)
        else:
            others.append(ckpt)
    return ResumePoint(mine[-1] if mine else None, leftovers, others[-1] if others else None)


def discard_checkpoints(dirs: StageDirs) -> None:
    """Delete every checkpoint of a stage (for --restart): the next run starts at step 0."""
    for path in [c.path for c in complete_checkpoints(dirs)] + incomplete_checkpoint_dirs(dirs):
        remove_inside(path, inside=dirs.run_dir)
