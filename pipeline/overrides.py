"""What changes a pipeline file before it is validated: `--set KEY.PATH=VALUE` overrides and the top-level
`defaults:` section (torch-free).

- `--set stages.sft.train.learning_rate=1e-5`: VALUE is read as YAML (`8`, `true`, `[a, b]`, `{r: 8}`), then
  checked like the file's own values. `rlhf run` records the overrides in RUN_DIR/pipeline.json, and every
  later command on that run directory or pipeline file (status, report, plan, a re-run) applies the same
  ones, until `--set` gives others or `--no-overrides` clears them.
- `defaults: {train: {precision: bf16}, launch: {...}}` is merged into every stage under its own values,
  section by section, for the sections the stage's kind has (a sample stage has no `train`).
"""

from __future__ import annotations

import copy
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


def recorded_overrides(run_dir: Path, pipeline_file: Path) -> list[str]:
    """The overrides the latest `rlhf run` of `pipeline_file` recorded in `run_dir` ([] for none or another file)."""
    try:
        record = json.loads((run_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return []
    if Path(record.get("pipeline", "")).resolve() != pipeline_file.resolve():
        return []
    return [str(o) for o in record.get("overrides") or []]
