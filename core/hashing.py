"""sha256 of files and directory trees, with a cache so that a fresh run re-reads nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from core.atomic import atomic_write_json


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class FileHasher:
    """sha256 of files, remembered by (path, size, mtime) in a JSON cache so unchanged files are not re-read."""

    def __init__(self, cache_file: Path | None = None):
        self.cache_file = cache_file
        self._cache: dict[str, list] = {}
        self._dirty = False
        if cache_file and cache_file.is_file():
            try:
                self._cache = json.loads(cache_file.read_text())
            except (OSError, ValueError):
                self._cache = {}

    def sha256(self, path: str | Path) -> str:
        """The file's sha256, from the cache when its size and mtime are unchanged."""
        path = Path(path).resolve()
        stat = path.stat()
        key = str(path)
        hit = self._cache.get(key)
        if hit and hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns:
            return hit[2]
        digest = sha256_file(path)
        self._cache[key] = [stat.st_size, stat.st_mtime_ns, digest]
        self._dirty = True
        return digest

    def tree_sha256(self, directory: str | Path) -> str:
        """One hash over every file under a directory: relative names and contents, in sorted order."""
        directory = Path(directory)
        digest = hashlib.sha256()
        for file in sorted(p for p in directory.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(directory).as_posix()}\0{self.sha256(file)}\n".encode())
        return digest.hexdigest()

    def save(self) -> None:
        """Persist the cache if anything new was hashed (best effort: a read-only run dir is fine)."""
        if self.cache_file and self._dirty:
            try:
                atomic_write_json(self.cache_file, self._cache)
                self._dirty = False
            except OSError:
                pass
