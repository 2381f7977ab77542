"""The run lock: one `rlhf run` (or by-hand stage launch) at a time per run directory."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from core.errors import InputError


class RunLock:
    """An exclusive, non-blocking lock on a run directory, released when the process exits."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise InputError(f"{self.path.parent}: another `rlhf run` is using this run directory (pid {holder}); "
                             "wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def is_held(run_dir: Path) -> bool:
        """Whether some process holds the lock of `run_dir` now (a run is going)."""
        try:
            fd = os.open(Path(run_dir) / ".lock", os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
