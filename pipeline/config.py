"""The pipeline file: YAML -> typed, validated config.

Every problem (unknown key, wrong type, missing file, unknown kind, dangling input, cycle) is collected
and reported as one line each, `FILE:LINE: key.path: what was expected`, before anything is launched.
Relative paths in the file are resolved against the file's own directory, so a pipeline behaves the same
from any working directory.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, Field, ValidationError

from core.errors import InputError
from core.layout import run_dir_problem
from core.schema import LaunchSettings, OutputPath, StageConfig, StrictModel
from core.tracking import TrackingSettings
from pipeline import dag
from pipeline.assets import embedded_run_dir
from pipeline.overrides import apply_defaults, apply_overrides, parse_override, run_record, unknown_stage_problems
from pipeline.registry import KINDS
from rows.textfiles import read_utf8

STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Pipeline:
    """A validated pipeline file: where runs go, its stages by name, and the default launch settings."""

    path: Path
    run_dir: Path
    stages: dict[str, StageConfig]
    launch: LaunchSettings
    override: LaunchSettings | None = None  # `rlhf run --launch/--num-processes`: for every stage, this run only
    overrides: list[str] = field(default_factory=list)  # the `--set` overrides applied to the file

    def launch_for(self, name: str) -> LaunchSettings:
        """The stage's launch settings: the run's override, then the stage's own, then the pipeline-level
        `launch:`, key by key."""
        override, own = self.override or LaunchSettings(), self.stages[name].launch
        return LaunchSettings.model_construct(
            accelerate_config=override.accelerate_config or own.accelerate_config or self.launch.accelerate_config,
            num_processes=override.num_processes or own.num_processes or self.launch.num_processes,
        )

    def world_size(self, name: str) -> int:
        """How many processes the stage is launched on: `num_processes`, else its accelerate config's, else 1
        (what pipeline.runner's `accelerate launch` line gives)."""
        launch = self.launch_for(name)
        if launch.num_processes:
            return launch.num_processes
        return int(self.accelerate_settings(name).get("num_processes") or 1)

    def accelerate_settings(self, name: str) -> dict:
        """The stage's accelerate config file as a mapping ({} without one, or when it cannot be read: accelerate
        itself names the unreadable file at launch)."""
        config = self.launch_for(name).accelerate_config
        if not config:
            return {}
        try:
            settings = yaml.safe_load(Path(config).read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return settings if isinstance(settings, dict) else {}


class _PipelineFile(StrictModel):
    run_dir: OutputPath
    launch: LaunchSettings = LaunchSettings()
    defaults: dict[str, Any] = Field({}, description="merged into every stage, under its own values")
    tracking: TrackingSettings | None = Field(None, description="every stage's tracker, under a stage's own")
    stages: dict[str, dict[str, Any]] = Field(min_length=1)


def load_pipeline(path: str | Path, overrides: list[str] = (), *, run_dir: Path | None = None,
                  recorded: bool = True) -> Pipeline:
    """Read and validate a pipeline file with this command's `--set` overrides and its `defaults:`; raise
    InputError listing every problem, one line each. With `recorded`, the overrides the latest `rlhf run`
    recorded come first: given `run_dir`, all it applied (the run as it was made); else those it saved with
    `--save-overrides` (pipeline.overrides).
    The embedded pipeline, when installed rather than checked out, runs in ./runs/tiny (pipeline.assets).
    `run_dir` replaces the file's own: a command given a run directory acts on that directory, never on the
    one the file names (a copy's commands must not reach the original)."""
    path = Path(path)
    raw, lines = _read_yaml(path)
    context = {"base_dir": path.resolve().parent}
    installed_run_dir = embedded_run_dir(path)
    if run_dir is not None:
        raw["run_dir"] = str(Path(run_dir).resolve())
    elif installed_run_dir is not None:
        raw["run_dir"] = str(installed_run_dir)
    overrides = list(overrides)
    if recorded:
        recorded_in = raw.get("run_dir")
        record = run_record(context["base_dir"] / recorded_in, path) if isinstance(recorded_in, str) else {}
        overrides = (record.get("overrides" if run_dir is not None else "saved") or []) + overrides
    set_keys = [parse_override(o)[0] for o in overrides]
    unknown = unknown_stage_problems(raw, overrides, path=path)
    if unknown:
        raise InputError(unknown)
    raw = apply_overrides(raw, overrides)
    if run_dir is not None:  # over a recorded `--set run_dir=` too
        raw["run_dir"] = str(Path(run_dir).resolve())
    shared = {key: raw[key] for key in ("defaults", "tracking") if isinstance(raw.get(key), dict)}
    if shared and isinstance(raw.get("stages"), dict):
        merged = {**shared.get("defaults", {}), **({"tracking": shared["tracking"]} if "tracking" in shared else {})}
        raw["stages"] = apply_defaults(raw["stages"], merged,
                                       lambda kind: set(KINDS[kind].model_fields) if kind in KINDS else None)
    problems: list[str] = []

    def report(loc: tuple, message: str) -> None:
        key = ".".join(str(part) for part in loc)
        given = next((k for k in set_keys if loc[: len(k)] == k or k[: len(loc)] == loc), None)
        if given is not None:  # the value came from the command line
            problems.append(f"--set {'.'.join(given)}: {key}: {message}")
            return
        line = _line_of(lines, loc)
        problems.append(f"{path}{f':{line}' if line else ''}: {key}: {message}")

    try:
        top = _PipelineFile.model_validate(raw, context=context)
    except ValidationError as e:
        for loc, message in _describe(e, _PipelineFile):
            report(loc, message)
        raise InputError(problems) from None
    run_dir_refused = run_dir_problem(Path(top.run_dir))
    if run_dir_refused:
        report(("run_dir",), run_dir_refused)
    stages: dict[str, StageConfig] = {}
    for name, raw_stage in top.stages.items():
        stage, found = _stage(name, raw_stage, stage_names=list(top.stages), context=context)
        for loc, message in found:
            report(("stages", name) + loc, message)
        if stage is not None:
            stages[name] = stage
    if not problems:
        cycle = dag.find_cycle(stages)
        if cycle:
            report(("stages", cycle[0], "inputs"), f"inputs form a cycle: {' -> '.join(cycle)}")
    if not problems:  # acyclic: a check may walk a stage's ancestors
        for name, stage in stages.items():
            for loc, message in stage.pipeline_problems(stages):
                report(("stages", name) + loc, message)
    if not problems:
        for name, loc, message in length_problems(stages):
            report(("stages", name) + loc, message)
        for loc, message in tracking_problems(top.tracking, stages):
            report(loc, message)
    if problems:
        raise InputError(problems)
    return Pipeline(path=path.resolve(), run_dir=Path(top.run_dir), stages=stages, launch=top.launch,
                    overrides=list(overrides))


def _read_yaml(path: Path) -> tuple[dict, dict[tuple, int]]:
    """The file's top-level mapping and the line of every key path in it."""
    if not path.is_file():
        raise InputError(f"{path}: pipeline file not found")
    text = read_utf8(path, "a YAML pipeline file")
    try:
        tree = yaml.compose(text)
        if _expanded_size(tree) > MAX_YAML_NODES:
            raise InputError(f"{path}: its aliases (*name) expand to more than {MAX_YAML_NODES} values; a pipeline file "
                             "is never that big (a YAML alias bomb?)")
        raw = yaml.safe_load(text)
        lines = _key_lines(tree)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise InputError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping with keys run_dir and stages, got {type(raw).__name__}")
    return raw, lines


#: values a pipeline file may expand to, aliases counted at every use (the largest shipped one has ~600)
MAX_YAML_NODES = 100_000


def _expanded_size(node, sizes: dict | None = None) -> int:
    """How many values the YAML node graph holds once every alias is expanded, counted without expanding
    it (each shared node's size is computed once)."""
    sizes = {} if sizes is None else sizes
    if node is None:
        return 0
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a cycle (a recursive alias) counts once instead of recursing forever
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, sizes) for item in node.value)
    else:
        size = 1
    sizes[id(node)] = min(size, MAX_YAML_NODES + 1)
    return sizes[id(node)]


def _stage(name: str, raw: dict, *, stage_names: list[str], context: dict) -> tuple[StageConfig | None, list]:
    """One stage of the file validated by its kind: (the config or None, [(key path, problem)])."""
    if not STAGE_NAME.match(name):
        return None, [((), "stage names may use letters, digits, '_', '-' and '.' only")]
    kind = raw.get("kind")
    if kind not in KINDS:
        return None, [(("kind",), f"unknown stage kind {kind!r} (expected one of: {', '.join(sorted(KINDS))})")]
    cls = KINDS[kind]
    if isinstance(raw.get("train"), dict) and "report_to" in raw["train"]:
        return None, [(("train", "report_to"), "is now `tracking: {backend: wandb|trackio|mlflow}`, at the top "
                                               "of the file (every stage) or in the stage")]
    try:
        stage = cls.model_validate(raw, context=context)
    except ValidationError as e:
        return None, _describe(e, cls)
    problems = list(stage.input_problems())
    for role, required in cls.input_roles.items():
        present = stage.family(role) if role in cls.input_families else role in stage.inputs
        if required and not present:
            problems.append((("inputs",), f"missing input {role!r} (kind {kind} needs: {', '.join(cls.input_roles)})"))
    for role, source in stage.inputs.items():
        family, _, member = role.partition(".")
        loc = ("inputs", family, member) if member else ("inputs", role)
        if (family if member else role) not in cls.input_roles or bool(member) != (family in cls.input_families):
            expected = ", ".join(cls.input_roles) or "none"
            renamed = "; inputs.policy is now inputs.model" if role == "policy" and "model" in cls.input_roles else ""
            problems.append((loc, f"unknown input role for kind {kind} (expected: {expected}){renamed}"))
        elif source == name:
            problems.append((loc, "a stage cannot be its own input"))
        elif source not in stage_names:
            problems.append((loc, f"no stage named {source!r} (stages: {', '.join(stage_names)})"))
    return stage, problems


def tracking_problems(shared: TrackingSettings | None, stages: dict[str, StageConfig]) -> list[tuple[tuple, str]]:
    """Each tracker setting's problems once: the file's `tracking:` at its own key, a stage's own at the stage."""
    found = [(("tracking",) + loc, message) for loc, message in shared.problems()] if shared else []
    for name, stage in stages.items():
        if stage.tracking not in (shared, TrackingSettings()):
            found += [(("stages", name, "tracking") + loc, message) for loc, message in stage.tracking.problems()]
    return found


def length_problems(stages: dict[str, StageConfig]) -> list[tuple[str, tuple, str]]:
    """(stage, key path, message) for every sequence length beyond the positions of the model a stage reads,
    following each model's position range down the DAG from where it is known (a new model's config, a local
    model directory's config.json)."""
    positions: dict[str, int | None] = {}
    problems = []
    for name in dag.topological_order(stages):
        stage = stages[name]
        upstream = {role: positions[source] for role, source in stage.inputs.items()}
        problems += [(name, loc, message) for loc, message in stage.length_problems(upstream)]
        positions[name] = stage.output_positions(upstream)
    return problems


# --- error messages -----------------------------------------------------------------------------------


def _describe(error: ValidationError, model: type[BaseModel]) -> list[tuple[tuple, str]]:
    """Turn pydantic's errors into (key path, one-line message) pairs a user can act on."""
    out = []
    for err in error.errors(include_url=False):
        loc = tuple(part for part in err["loc"] if not _is_union_tag(part))
        error_type = err["type"]
        if error_type == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.7)
            hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
            if close:
                hint = f" (did you mean {close[0]}?{hint.replace(' (', ' ')}"
            out.append((loc, f"unknown key{hint}"))
        elif error_type == "missing":
            out.append((loc, "missing required key"))
        elif error_type == "value_error":
            out.append((loc, str(err["ctx"]["error"])))
        else:
            out.append((loc, f"{err['msg'][0].lower()}{err['msg'][1:]} (got {err['input']!r})"))
    # a union reports the same bad value once per member; keep the first message per key path
    seen: dict[tuple, str] = {}
    for loc, message in out:
        seen.setdefault(loc, message)
    return list(seen.items())


def _is_union_tag(part: Any) -> bool:
    # pydantic inserts the member type name into the path ("int", "function-after[...]", "list[...]")
    return isinstance(part, str) and ("[" in part or part in {"int", "float", "str", "bool", "none"})


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys accepted at `loc` inside `model`, for 'unknown key' messages."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            current = _item_type(current)
            continue
        if part not in current.model_fields:
            return []
        current = current.model_fields[part].annotation
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """Optional[X] -> X, Annotated[X, ...] -> X."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(members[0]) if len(members) == 1 else annotation
    return annotation


def _item_type(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    return args[-1] if args else None


def _key_lines(node: yaml.Node | None, prefix: tuple = ()) -> dict[tuple, int]:
    """Map every key path in a composed YAML document to its 1-based line number."""
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (key.value,)
            lines[path] = key.start_mark.line + 1
            lines.update(_key_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            lines[prefix + (i,)] = value.start_mark.line + 1
            lines.update(_key_lines(value, prefix + (i,)))
    return lines


def _line_of(lines: dict[tuple, int], loc: tuple) -> int | None:
    """The line of the deepest existing prefix of `loc` (a missing key points at its parent)."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None
