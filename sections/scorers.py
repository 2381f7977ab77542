"""What a policy was optimised against, and what a judge scores with, compared by content (torch-free).

A judge must not be the reward model a policy was optimised against. Comparing stage names misses the same
model reached another way (`judge.model` as a path to a reward stage's artifact, a copy under another stage,
grpo/rloo's `reward_model` path), so models are compared by their weights' sha256 (from the stage's manifest
where there is one) and rules by their `module:function`. A rule that is both the reward and the judge is
legitimate (RLVR: a verifiable checker) and is reported as such, not refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from core.hashing import sha256_file
from core.layout import StageDirs
from core.manifest import read_manifest

#: inputs roles that name the reward model a stage was optimised against
REWARD_ROLES = ("reward",)
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _manifest_of(artifact: Path) -> dict | None:
    return read_manifest(StageDirs(artifact.parent))


def weights_digest(directory: str | Path) -> str | None:
    """One sha256 over a model directory's top-level weight files (name and content): from the stage's manifest
    when the directory is a stage's artifact, else read. None when it holds no weights."""
    directory = Path(directory)
    manifest = _manifest_of(directory) if directory.name == "artifact" else None
    if manifest and manifest.get("outputs"):
        files = {Path(o["path"]).name: o["sha256"] for o in manifest["outputs"]
                 if Path(o["path"]).parent.name == "artifact" and o["path"].endswith(WEIGHT_SUFFIXES)}
    else:
        files = {f.name: sha256_file(f) for f in sorted(directory.glob("*")) if f.name.endswith(WEIGHT_SUFFIXES)}
    if not files:
        return None
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    return digest.hexdigest()


@dataclass
class Optimised:
    """What a policy's lineage was optimised against: reward models (weights digest -> the stage or path that
    named it) and rules (`module:function` -> the stage)."""

    models: dict[str, str] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)


def optimised_against(manifest: dict | None) -> Optimised:
    """Every reward model and rule a stage and its ancestors (through their manifests) were optimised
    against: `inputs.reward`, grpo/rloo's `reward_model` and `reward_rule`."""
    found, todo, seen = Optimised(), [manifest], set()
    while todo:
        current = todo.pop()
        if not current or current.get("fingerprint") in seen:
            continue
        seen.add(current.get("fingerprint"))
        name, config = current.get("stage", "?"), current.get("config") or {}
        for role, given in (current.get("inputs") or {}).items():
            artifact = Path(given["artifact"]) if given.get("artifact") else None
            if artifact is None:
                continue
            if role in REWARD_ROLES:
                digest = weights_digest(artifact)
                if digest:
                    found.models.setdefault(digest, f"{name} (inputs.{role}: {given.get('stage')})")
            todo.append(_manifest_of(artifact))
        if config.get("reward_model"):
            digest = weights_digest(config["reward_model"])
            if digest:
                found.models.setdefault(digest, f"{name} (reward_model: {config['reward_model']})")
        rule = config.get("reward_rule") or {}
        if rule.get("function"):
            found.rules.setdefault(rule["function"], name)
    return found
