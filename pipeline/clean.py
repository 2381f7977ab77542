"""`rlhf clean`: free disk space in a run directory without losing anything a run still needs.

    rlhf clean RUN_DIR --keep-artifacts   checkpoints of complete stages and leftovers (torn checkpoints,
                                          checkpoints of replaced runs, half-written artifacts); every
                                          stage stays fresh
    rlhf clean RUN_DIR --yes              the same, plus the artifacts of complete stages (their manifests,
                                          logs and the report stay; `rlhf run` rebuilds them)

Checkpoints of unfinished stages are always kept: they are how an interrupted or failed stage resumes.
`--dry-run` shows the list and the sizes and deletes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.checkpoints import complete_checkpoints, incomplete_checkpoint_dirs
from core.manifest import read_manifest
from core.removal import check_inside, remove_inside
from pipeline.config import Pipeline
from pipeline.plan import stage_states


@dataclass
class Removal:
    """One path `rlhf clean` removes, its size and why it can go."""

    stage: str
    path: Path
    size: int
    why: str


def tree_size(path: Path) -> int:
    """Bytes under a file or directory (0 for a symlink: removing it frees nothing)."""
    if path.is_symlink():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def clean_plan(pipeline: Pipeline, keep_artifacts: bool) -> tuple[list[Removal], list[str]]:
    """(what to remove, notes on what is kept and why), stage by stage."""
    removals: list[Removal] = []
    kept: list[str] = []

    def remove(stage: str, path: Path, why: str) -> None:
        if path.exists() or path.is_symlink():
            removals.append(Removal(stage, path, tree_size(path), why))

    for name, status in stage_states(pipeline).items():
        dirs = status.dirs
        for leftover in ("artifact.previous", "artifact.staging"):
            remove(name, dirs.root / leftover, "half-written artifact")
        for torn in incomplete_checkpoint_dirs(dirs):
            remove(name, torn, "incomplete checkpoint")
        checkpoints = complete_checkpoints(dirs)
        if status.state == "fresh":
            for ckpt in checkpoints:
                remove(name, ckpt.path, "checkpoint of a complete stage")
            if not keep_artifacts:
                remove(name, dirs.artifact, "artifact of a complete stage (rebuilt by `rlhf run`)")
            continue
        finished = (read_manifest(dirs) or {}).get("fingerprint")
        resumable = [c for c in checkpoints if c.fingerprint != finished]
        for ckpt in checkpoints:
            if ckpt.fingerprint == finished:
                remove(name, ckpt.path, "checkpoint of a run that completed and was replaced")
        if resumable:
            kept.append(f"{name}: {len(resumable)} checkpoint(s) kept: the stage is {status.state} and resumes "
                        f"from step {resumable[-1].step}")
    return removals, kept


def apply(removals: list[Removal], run_dir: Path) -> None:
    """Delete every path of the plan, each inside `run_dir` and never through a symlink; every path is checked
    before the first is deleted, so a refusal leaves the directory as it was."""
    for removal in removals:
        check_inside(removal.path, inside=run_dir)
    for removal in removals:
        remove_inside(removal.path, inside=run_dir)


def human_size(size: int) -> str:
    """'12.3 MB'."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
