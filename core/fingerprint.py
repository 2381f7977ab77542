"""Fingerprints: sha256 over what a stage reads (kind, code version, the config keys that change its result,
the contents of its data files, its inputs' fingerprints), and the key paths that changed between two."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from core.hashing import FileHasher
from core.hubdata import hub_commit
from core.schema import HubDataset, InputDir, InputFile, StageConfig


def semantic_config(section: Any, hasher: FileHasher | None = None) -> Any:
    """The config as plain data with fingerprint-neutral fields removed.

    With a hasher, every input file or directory is replaced by its content hash, so moving the repository
    or renaming a data file with the same bytes does not invalidate anything, and every Hub dataset by the
    commit its revision names.
    """
    if isinstance(section, BaseModel):
        out = {}
        for name, field in type(section).model_fields.items():
            value = getattr(section, name)
            # an optional field left unset is left out, so adding a new optional setting to a kind does not
            # invalidate every existing run
            extra = field.json_schema_extra or {}
            if not extra.get("fingerprint", True) or (value is None and field.default is None):
                continue
            if not extra.get("fingerprint_default", True) and value == field.default:
                continue
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
    if hasher is not None and isinstance(section, HubDataset):  # a branch that moves makes the stage stale
        return {"hub": section.rpartition("@")[0], "commit": hub_commit(section)}
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
