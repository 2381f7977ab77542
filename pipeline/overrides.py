"""What changes a pipeline file before it is validated: `--set KEY.PATH=VALUE` overrides and the top-level
`defaults:` section (torch-free).

- `--set stages.sft.train.learning_rate=1e-5`: VALUE is read as YAML (`8`, `true`, `[a, b]`, `{r: 8}`), then
  checked like the file's own values. It applies to the one command, as `key=value` does in TRL and
  LLaMA-Factory. A relative path in it is read from the current directory (`run_dir`, and any value that
  names an existing file or folder from there); the file's own paths stay relative to the file.
- `rlhf run` records what it applied in RUN_DIR/pipeline.json: commands given that run directory (status,
  report, export, chat) describe the run as it was made. Commands given the pipeline file apply only their
  own `--set`, plus those a run saved with `--save-overrides` (until `--no-overrides`), and say when the
  last run applied others.
- `defaults: {train: {precision: bf16}, launch: {...}}` is merged into every stage under its own values,
  section by section, for the sections the stage's kind has (a sample stage has no `train`).
"""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path
from typing import Any

import yaml

from core.errors import InputError
from core.layout import RUN_RECORD


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """`a.b.c=value` -> (("a", "b", "c"), the value read as YAML); InputError when it is not KEY=VALUE."""
    key, sep, value = text.partition("=")
    path = tuple(key.strip().split("."))
    if not sep or not all(path):
        raise InputError(f"--set {text}: expected KEY.PATH=VALUE, e.g. stages.sft.train.learning_rate=1e-5")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return path, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """A copy of the file's mapping with each override set (creating the mappings on its path)."""
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(f"--set {text}: {'.'.join(path[: depth + 1])} is not a mapping")
            node = child
        node[path[-1]] = value
    return out


def merge_under(own: Any, defaults: Any) -> Any:
    """`own` with what it lacks taken from `defaults`, mapping by mapping (own values win)."""
    if not (isinstance(own, dict) and isinstance(defaults, dict)):
        return copy.deepcopy(own)
    merged = copy.deepcopy(defaults)
    for key, value in own.items():
        merged[key] = merge_under(value, defaults.get(key)) if key in defaults else copy.deepcopy(value)
    return merged


def apply_defaults(stages: dict[str, Any], defaults: dict, fields_of) -> dict[str, Any]:
    """Each stage with `defaults` merged under it, for the sections `fields_of(kind)` (its config's field
    names; None for an unknown kind) lists."""
    out = {}
    for name, stage in stages.items():
        fields = fields_of(stage.get("kind")) if isinstance(stage, dict) else None
        if fields is None:
            out[name] = stage
            continue
        shared = {key: value for key, value in defaults.items() if key in fields and key not in ("kind", "inputs")}
        out[name] = merge_under(stage, shared)
    return out


def run_record(run_dir: Path, pipeline_file: Path) -> dict:
    """What the latest `rlhf run` of `pipeline_file` recorded in `run_dir`: {"overrides": applied, "saved": kept
    for later commands}; empty lists for none, or for a run of another file."""
    try:
        record = json.loads((run_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict) or Path(str(record.get("pipeline", ""))).resolve() != pipeline_file.resolve():
        record = {}
    return {key: [str(o) for o in record.get(key) or []] for key in ("overrides", "saved")}


def from_current_directory(overrides: list[str], *, cwd: Path) -> list[str]:
    """The overrides with relative paths made absolute from `cwd`: `run_dir`'s value, and any string (in a list,
    or a mapping's `path`) that names an existing file or folder from there. Other values are left to the
    file's own rules (relative to the file; Hub ids)."""
    def resolved(value: Any, *, output: bool = False) -> Any:
        if isinstance(value, list):
            return [resolved(item) for item in value]
        if isinstance(value, dict):
            return {k: resolved(v) if k == "path" else v for k, v in value.items()}
        if isinstance(value, str) and value and not Path(value).is_absolute() and (output or (cwd / value).exists()):
            return str((cwd / value).resolve())
        return value

    out = []
    for text in overrides:
        path, value = parse_override(text)
        new = resolved(value, output=path == ("run_dir",))
        out.append(text if new == value else f"{'.'.join(path)}={json.dumps(new)}")
    return out


def unknown_stage_problems(raw: dict, overrides: list[str], *, path: Path) -> list[str]:
    """`--set stages.NAME.…` for a stage the file does not have (a typo), named against the `--set`; setting
    a whole new stage (`--set stages.NAME={kind: …}`) is allowed."""
    stages = raw.get("stages") if isinstance(raw.get("stages"), dict) else {}
    problems = []
    for text in overrides:
        key = parse_override(text)[0]
        if len(key) > 2 and key[0] == "stages" and key[1] not in stages:
            near = difflib.get_close_matches(key[1], list(stages), n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            problems.append(f"--set {text.partition('=')[0]}: no stage {key[1]} in {path} ({hint}stages: "
                            f"{', '.join(stages)})")
    return problems


def override_notes(*, run_dir: Path, pipeline_file: Path, applied: list[str]) -> list[str]:
    """What a command on the pipeline file says about overrides: those it applies, and those the latest
    `rlhf run` applied that it does not (so a stage shown stale for that is not a surprise)."""
    notes = ["with overrides: " + " ".join(f"--set {o}" for o in applied)] if applied else []
    left_out = [o for o in run_record(run_dir, pipeline_file)["overrides"] if o not in applied]
    if left_out:
        notes.append("not applied: the last `rlhf run` of this file also had " + " ".join(f"--set {o}" for o in left_out)
                     + " (--set applies to one command; give them again, or run with --save-overrides to keep them)")
    return notes
