"""A stage's manifest: written last and atomically, so the stage is complete iff its manifest is valid and its
listed output files are intact."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from core.atomic import atomic_write_json, fsync_dir
from core.hashing import FileHasher, sha256_file
from core.layout import StageDirs
from core.removal import remove_inside

MANIFEST_SCHEMA = 1
#: the libraries whose versions shape a stage's result, recorded in every manifest
LIBRARIES = ("torch", "transformers", "trl", "accelerate", "deepspeed", "peft", "datasets", "tokenizers")


def read_manifest(dirs: StageDirs) -> dict | None:
    """The stage's manifest if it exists, parses and has this schema version; else None."""
    try:
        manifest = json.loads(dirs.manifest.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != MANIFEST_SCHEMA:
        return None
    return manifest


def output_problems(dirs: StageDirs, manifest: dict, *, hasher: FileHasher | None = None,
                    verify_hashes: bool = False) -> list[str]:
    """Output files listed in the manifest that are missing, symlinks or changed. Size always; the sha256 when
    `verify_hashes` (read in full), or through `hasher` (its cache) when a file's mtime is not the one recorded:
    a file rewritten at the same size is caught without re-reading every artifact on every `rlhf status`."""
    problems = []
    for entry in manifest.get("outputs", []):
        path = dirs.root / entry["path"]
        if path.is_symlink():
            problems.append(f"{entry['path']} is a symlink (rlhf writes none)")
        elif not path.is_file():
            problems.append(f"{entry['path']} is missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{entry['path']} changed size")
        elif verify_hashes:
            if sha256_file(path) != entry["sha256"]:
                problems.append(f"{entry['path']} changed content")
        elif hasher is not None and path.stat().st_mtime_ns != entry.get("mtime_ns"):
            if hasher.sha256(path) != entry["sha256"]:
                problems.append(f"{entry['path']} changed content")
    return problems


def describe_outputs(dirs: StageDirs, directory: Path) -> list[dict]:
    """Every file under `directory` as {path relative to the stage dir, size, mtime, sha256}, for the manifest."""
    return [
        {"path": f.relative_to(dirs.root).as_posix(), "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns,
         "sha256": sha256_file(f)}
        for f in sorted(p for p in directory.rglob("*") if p.is_file())
    ]


def readable_as_umask_allows(directory: Path) -> None:
    """Give every file under `directory` the mode a plain new file gets (0o666 less the umask): some writers
    (safetensors) create weights 0600, which colleagues sharing the run directory or its export cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    for file in directory.rglob("*"):
        if file.is_file() and not file.is_symlink():
            os.chmod(file, 0o666 & ~umask)


def commit_artifact(dirs: StageDirs, staged_artifact: Path, manifest: dict) -> None:
    """Replace the stage's artifact with `staged_artifact` and write its manifest, crash-safely.

    The old manifest goes first, so at every instant either a manifest matches the files on disk or there
    is no manifest (and the stage simply counts as not complete).
    """
    readable_as_umask_allows(staged_artifact)
    dirs.manifest.unlink(missing_ok=True)
    fsync_dir(dirs.root)
    previous = dirs.root / "artifact.previous"
    remove_inside(previous, inside=dirs.run_dir)
    if dirs.artifact.exists():
        os.replace(dirs.artifact, previous)
    os.replace(staged_artifact, dirs.artifact)
    manifest = dict(manifest, outputs=describe_outputs(dirs, dirs.artifact))
    atomic_write_json(dirs.manifest, manifest)
    remove_inside(previous, inside=dirs.run_dir)


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape a stage's result (None when not installed)."""
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def stage_manifest(spec: dict, *, metrics: dict, resumed_from: int | None, started_at: datetime,
                   wall_time_s: float, world_size: int) -> dict:
    """The manifest of a stage that ran `spec` and produced `metrics` (its outputs are added at commit)."""
    return {
        "schema_version": MANIFEST_SCHEMA,
        "stage": spec["stage"],
        "kind": spec["kind"],
        "fingerprint": spec["fingerprint"],
        "fingerprint_payload": spec["fingerprint_payload"],
        "pipeline": spec["pipeline"],
        "inputs": spec["inputs"],
        "config": spec["config"],
        "data_files": spec["data_files"],
        "hub_datasets": spec.get("hub_datasets") or [],
        "artifact": "artifact",
        "metrics": metrics,
        "resumed_from_step": resumed_from,
        "started_at": started_at.isoformat(timespec="seconds"),
        "ended_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(wall_time_s, 2),
        "world_size": world_size,
        "versions": versions(),
    }
