"""Decide, like DVC's `changed()`, what each stage's state is and why: definition, inputs, then outputs.

    fresh        manifest valid, fingerprint equal, output files intact: skipped
    stale        a manifest exists but the config, data, an input or an output changed: re-runs
    interrupted  checkpoints of the current fingerprint, no valid manifest: resumes from the latest
    conflict     checkpoints of another config and no manifest for them: refused unless --restart
    missing      never run
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.checkpoints import resume_point
from core.errors import InputError
from core.fingerprint import fingerprint, fingerprint_payload, input_files, payload_changes
from core.hashing import FileHasher
from core.layout import StageDirs
from core.manifest import output_problems, read_manifest
from pipeline import dag
from pipeline.config import Pipeline
from rows.datasources import hub_records


@dataclass
class StageState:
    """One stage's state relative to the pipeline file as it is now."""

    name: str
    kind: str
    dirs: StageDirs
    fingerprint: str
    payload: dict
    state: str
    reason: str
    resume_step: int | None = None
    manifest: dict | None = None
    inputs: dict[str, str] = field(default_factory=dict)  # role -> stage name


def hasher_for(pipeline: Pipeline) -> FileHasher:
    """The run directory's file-hash cache."""
    return FileHasher(pipeline.run_dir / ".cache" / "file-hashes.json")


def stage_states(pipeline: Pipeline, hasher: FileHasher | None = None) -> dict[str, StageState]:
    """Every stage's status, in topological order."""
    hasher = hasher or hasher_for(pipeline)
    statuses: dict[str, StageState] = {}
    for name in dag.topological_order(pipeline.stages):
        stage = pipeline.stages[name]
        upstream = {role: statuses[source].fingerprint for role, source in stage.inputs.items()}
        payload = fingerprint_payload(stage, upstream, hasher)
        dirs = StageDirs.of(pipeline.run_dir, name)
        files = stage.state_files(dirs.root)
        if files:  # e.g. people's labels: a new one makes the stage stale
            payload["state_files"] = {f.relative_to(dirs.root).as_posix(): hasher.sha256(f) if f.is_file() else None
                                      for f in files}
        statuses[name] = stage_state(name, stage.kind, dirs, payload=payload, inputs=dict(stage.inputs), hasher=hasher)
    hasher.save()
    return statuses


def stage_state(name: str, kind: str, dirs: StageDirs, *, payload: dict, inputs: dict[str, str],
                hasher: FileHasher | None = None) -> StageState:
    """The state of one stage whose fingerprint payload is `payload`, from its files on disk."""
    fp = fingerprint(payload)
    manifest = read_manifest(dirs)
    point = resume_point(dirs, fp)
    status = StageState(name, kind, dirs, fp, payload, "missing", "never run", manifest=manifest, inputs=inputs)
    if manifest is not None and manifest.get("fingerprint") == fp:
        broken = output_problems(dirs, manifest, hasher=hasher)
        if not broken:
            status.state, status.reason = "fresh", "up to date"
            return status
        status.state, status.reason = "stale", "outputs changed: " + "; ".join(broken)
        if not (dirs.root / manifest.get("artifact", "artifact")).exists():
            status.reason = "its artifact was removed (rlhf clean): re-runs to rebuild it"
    elif manifest is not None:
        status.state, status.reason = "stale", _why_changed(manifest.get("fingerprint_payload") or {}, payload)
    if point.resume is not None:
        status.state, status.resume_step = "interrupted", point.resume.step
        status.reason = f"interrupted at step {point.resume.step}: resumes from its checkpoint"
    elif point.conflict is not None:
        status.state = "conflict"
        status.reason = (f"interrupted at step {point.conflict.step} under a different config; "
                         f"re-run with --restart {name} to discard its checkpoints")
    return status


def _why_changed(old: dict, new: dict) -> str:
    """'config changed: train.learning_rate' / 'input model changed' / 'data changed: …'."""
    changes = payload_changes(old, new)
    if not changes:
        return "fingerprint changed"
    inputs = [c.split(".", 1)[1] for c in changes if c.startswith("inputs.")]
    data = [c.removeprefix("config.") for c in changes if c.startswith("config.") and c.endswith("sha256")]
    config = [c.removeprefix("config.") for c in changes if c.startswith("config.") and not c.endswith("sha256")]
    other = [c for c in changes if c.split(".")[0] in ("kind", "version")]
    parts = []
    if config:
        parts.append("config changed: " + ", ".join(config))
    if data:
        parts.append("data changed: " + ", ".join(d.rsplit(".", 1)[0] for d in data))
    if inputs:
        parts.append("input changed: " + ", ".join(inputs))
    if other:
        parts.append("stage code version changed")
    return "; ".join(parts)


@dataclass
class RunPlan:
    """Which stages run, in order, and what happens to the others."""

    statuses: dict[str, StageState]
    to_run: list[str]
    skipped: dict[str, str]  # name -> why it does not run


def make_plan(pipeline: Pipeline, only: list[str] | None = None, start: str | None = None,
              *, restart: list[str] | None = None, hasher: FileHasher | None = None) -> RunPlan:
    """Select the stages to run; raise InputError for an unknown name, a conflict or a missing input."""
    only, restart = list(only or []), list(restart or [])
    for flag, names in (("--only", only), ("--from", [start] if start else []), ("--restart", restart)):
        for name in names:
            if name not in pipeline.stages:
                raise InputError(f"{flag} {name}: no such stage in {pipeline.path} (stages: {', '.join(pipeline.stages)})")
    statuses = stage_states(pipeline, hasher)
    selected = set(pipeline.stages)
    if only:
        selected &= set(only) | set(restart)
    if start:
        selected &= dag.downstream(pipeline.stages, [start]) | set(restart)
    to_run, skipped, problems = [], {}, []
    for name, status in statuses.items():
        if name not in selected:
            skipped[name] = "not selected" if status.state != "fresh" else "fresh"
            continue
        if status.state == "fresh" and name not in restart:
            skipped[name] = "fresh"
            continue
        if status.state == "conflict" and name not in restart:
            problems.append(f"stage {name}: {status.reason}")
            continue
        for role, source in status.inputs.items():
            if statuses[source].state != "fresh" and source not in to_run:
                problems.append(f"stage {name} needs {source} (input {role}), which is {statuses[source].state} "
                                f"and not selected to run; add it to --only or drop --only/--from")
        to_run.append(name)
    if problems:
        raise InputError(problems)
    return RunPlan(statuses, to_run, skipped)


def stage_spec(pipeline: Pipeline, name: str, statuses: dict[str, StageState], *, hasher: FileHasher,
               restart: bool = False) -> dict:
    """What a stage process needs: its resolved config, fingerprint, input artifacts and directories."""
    status = statuses[name]
    stage = pipeline.stages[name]
    inputs = {}
    for role, source in stage.inputs.items():
        upstream = statuses[source]
        if upstream.state != "fresh":
            raise InputError(f"stage {name}: its input {role!r} (stage {source}) is {upstream.state} "
                             f"({upstream.reason}); run `rlhf run {pipeline.path} --only {source}` first")
        inputs[role] = {"stage": source, "fingerprint": upstream.fingerprint,
                        "artifact": str(upstream.dirs.root / upstream.manifest["artifact"])}
    data_files = []
    for path in input_files(stage):
        files = [Path(path)] if Path(path).is_file() else sorted(p for p in Path(path).rglob("*") if p.is_file())
        data_files += [{"path": str(f), "size": f.stat().st_size, "sha256": hasher.sha256(f)} for f in files]
    hasher.save()
    return {
        "pipeline": str(pipeline.path),
        "stage": name,
        "kind": stage.kind,
        "fingerprint": status.fingerprint,
        "fingerprint_payload": status.payload,
        "config": stage.model_dump(mode="json"),
        "inputs": inputs,
        "run_dir": str(pipeline.run_dir),
        "stage_dir": str(status.dirs.root),
        "data_files": data_files,
        "hub_datasets": hub_records(stage),
        "restart": restart,
        "state": status.state,
        "reason": status.reason,
    }
