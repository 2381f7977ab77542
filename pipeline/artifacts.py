"""The run directory: stage layout, file hashes, fingerprints, manifests, checkpoints and the run lock.

Torch-free: the orchestrator decides what is fresh from these files alone.

    RUN_DIR/.lock                         one `rlhf run` at a time
    RUN_DIR/.cache/file-hashes.json       sha256 by (path, size, mtime): a fresh run re-reads nothing
    RUN_DIR/<stage>/spec.json             what the stage process is asked to do (written by the runner)
    RUN_DIR/<stage>/checkpoints/step-NNNNNN/   complete iff it holds CHECKPOINT_MARKER
    RUN_DIR/<stage>/artifact/             the stage's output (HF format)
    RUN_DIR/<stage>/manifest.json         written last, atomically: the stage is complete iff it is valid
    RUN_DIR/<stage>/logs/                 attempt-N.log, metrics.jsonl, tensorboard/
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline.config import InputDir, InputFile, StageConfig

MANIFEST_SCHEMA = 1
CHECKPOINT_MARKER = "rlhf-checkpoint.json"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


@dataclass(frozen=True)
class StageDirs:
    """Where one stage keeps its files inside the run directory."""

    root: Path

    @classmethod
    def of(cls, run_dir: Path, stage: str) -> "StageDirs":
        """The directories of `stage` in `run_dir`."""
        return cls(Path(run_dir) / stage)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def artifact(self) -> Path:
        return self.root / "artifact"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


# --- atomic files ---------------------------------------------------------------------------------------


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file, fsync, then rename over `path`: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    """atomic_write_text of indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- hashing --------------------------------------------------------------------------------------------


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


# --- fingerprints ---------------------------------------------------------------------------------------


def semantic_config(section: Any, hasher: FileHasher | None = None) -> Any:
    """The config as plain data with fingerprint-neutral fields removed.

    With a hasher, every input file or directory is replaced by its content hash, so moving the repository
    or renaming a data file with the same bytes does not invalidate anything.
    """
    if isinstance(section, BaseModel):
        out = {}
        for name, field in type(section).model_fields.items():
            value = getattr(section, name)
            # an optional field left unset is left out, so adding a new optional setting to a kind does not
            # invalidate every existing run
            if (field.json_schema_extra or {}).get("fingerprint", True) and not (value is None and field.default is None):
                out[name] = semantic_config(value, hasher)
        return out
    if isinstance(section, dict):
        return {str(k): semantic_config(v, hasher) for k, v in section.items()}
    if isinstance(section, (list, tuple)):
        return [semantic_config(v, hasher) for v in section]
    if hasher is not None and isinstance(section, InputFile):
        return {"sha256": hasher.sha256(section)}
    if hasher is not None and isinstance(section, InputDir):
        return {"tree_sha256": hasher.tree_sha256(section)}
    return section


def input_files(section: Any) -> list[str]:
    """Every input file and directory named anywhere in a config section."""
    if isinstance(section, BaseModel):
        return [p for name in type(section).model_fields for p in input_files(getattr(section, name))]
    if isinstance(section, dict):
        return [p for v in section.values() for p in input_files(v)]
    if isinstance(section, (list, tuple)):
        return [p for v in section for p in input_files(v)]
    return [str(section)] if isinstance(section, (InputFile, InputDir)) else []


def fingerprint_payload(stage: StageConfig, input_fingerprints: dict[str, str], hasher: FileHasher) -> dict:
    """What a stage's fingerprint covers: kind and code version, semantic config with file contents, inputs."""
    config = semantic_config(stage, hasher)
    config.pop("inputs", None)  # replaced by the inputs' fingerprints below
    return {
        "kind": stage.kind,
        "version": type(stage).version,
        "config": config,
        "inputs": dict(sorted(input_fingerprints.items())),
    }


def fingerprint(payload: dict) -> str:
    """sha256 of the payload's canonical JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def payload_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Key paths whose values differ between two fingerprint payloads (for 'stale because …')."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in sorted(set(old) | set(new), key=str):
            changes += payload_changes(old.get(key), new.get(key), f"{prefix}{key}.")
        return changes
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in payload_changes(a, b, f"{prefix}{i}.")]
    return [] if old == new else [prefix.rstrip(".")]


# --- manifests ------------------------------------------------------------------------------------------


def read_manifest(dirs: StageDirs) -> dict | None:
    """The stage's manifest if it exists, parses and has this schema version; else None."""
    try:
        manifest = json.loads(dirs.manifest.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != MANIFEST_SCHEMA:
        return None
    return manifest


def output_problems(dirs: StageDirs, manifest: dict, verify_hashes: bool = False) -> list[str]:
    """Output files listed in the manifest that are missing or changed (size always; sha256 if asked)."""
    problems = []
    for entry in manifest.get("outputs", []):
        path = dirs.root / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']} is missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{entry['path']} changed size")
        elif verify_hashes and sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']} changed content")
    return problems


def describe_outputs(dirs: StageDirs, directory: Path) -> list[dict]:
    """Every file under `directory` as {path relative to the stage dir, size, sha256}, for the manifest."""
    return [
        {"path": f.relative_to(dirs.root).as_posix(), "size": f.stat().st_size, "sha256": sha256_file(f)}
        for f in sorted(p for p in directory.rglob("*") if p.is_file())
    ]


def commit_artifact(dirs: StageDirs, staged_artifact: Path, manifest: dict) -> None:
    """Replace the stage's artifact with `staged_artifact` and write its manifest, crash-safely.

    The old manifest goes first, so at every instant either a manifest matches the files on disk or there
    is no manifest (and the stage simply counts as not complete).
    """
    dirs.manifest.unlink(missing_ok=True)
    _fsync_dir(dirs.root)
    previous = dirs.root / "artifact.previous"
    shutil.rmtree(previous, ignore_errors=True)
    if dirs.artifact.exists():
        os.replace(dirs.artifact, previous)
    os.replace(staged_artifact, dirs.artifact)
    manifest = dict(manifest, outputs=describe_outputs(dirs, dirs.artifact))
    atomic_write_json(dirs.manifest, manifest)
    shutil.rmtree(previous, ignore_errors=True)


# --- checkpoints ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint: its directory, optimizer step and the fingerprint of the run that wrote it."""

    path: Path
    step: int
    fingerprint: str


def checkpoint_dir(dirs: StageDirs, step: int) -> Path:
    """The directory name of the checkpoint at `step`."""
    return dirs.checkpoints / f"step-{step:06d}"


def commit_checkpoint(dirs: StageDirs, written: Path, step: int, fingerprint: str, stage: str, keep_last: int) -> Path:
    """Make the fully written directory `written` the complete checkpoint of `step`: write the marker
    (fingerprint, step) into it, rename it to `step-NNNNNN`, then keep only the `keep_last` newest.
    Main process only, after every process has finished writing."""
    atomic_write_json(written / CHECKPOINT_MARKER, {"fingerprint": fingerprint, "step": step, "stage": stage})
    final = checkpoint_dir(dirs, step)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(written, final)
    for old in complete_checkpoints(dirs)[:-keep_last]:
        shutil.rmtree(old.path, ignore_errors=True)
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
    """Directories under checkpoints/ that are not complete checkpoints (torn writes, library temp dirs)."""
    if not dirs.checkpoints.is_dir():
        return []
    complete = {c.path for c in complete_checkpoints(dirs)}
    return sorted(p for p in dirs.checkpoints.iterdir() if p.is_dir() and p not in complete)


# --- the run lock ---------------------------------------------------------------------------------------


class RunLock:
    """An exclusive, non-blocking lock on a run directory, released when the process exits."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        from pipeline.errors import InputError

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
    shutil.rmtree(dirs.checkpoints, ignore_errors=True)
