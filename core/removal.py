"""Deleting inside a run directory, and only there: run directories are copied, mounted and received from
others, so a symlink planted in one must never turn a clean-up into a deletion somewhere else.

Every removal names the directory it must stay inside (a stage's or the run's). The path may not be a
symlink's target: a link at the path itself is unlinked (its target untouched), a link on the way down
from that directory is refused. `shutil.rmtree` then deletes without following links below (its
fd-based walk on Linux).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from core.errors import InputError


def check_inside(path: Path, *, inside: Path) -> None:
    """Raise InputError unless `path` lies under `inside`, reached through real directories only."""
    path, inside = Path(os.path.abspath(path)), Path(os.path.abspath(inside))
    if path == inside or inside not in path.parents:
        raise InputError(f"{path}: refusing to delete outside {inside}")
    for directory in [*reversed(path.relative_to(inside).parents)][1:]:
        if (inside / directory).is_symlink():
            raise InputError(f"{inside / directory}: a symlink; refusing to delete {path} through it")


def remove_inside(path: Path, *, inside: Path) -> bool:
    """Delete the file or tree `path` after `check_inside`. A symlink at `path` is unlinked, never followed.
    Returns whether anything was removed; raises InputError (deleting nothing) where `check_inside` does."""
    check_inside(path, inside=inside)
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return True
    if not path.exists():
        return False
    shutil.rmtree(path)
    return True
