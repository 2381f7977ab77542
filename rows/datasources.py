"""Data entries and their rows: local files, folders and Hub datasets, read one row at a time.

Torch-free: the orchestrator checks every row with these before it launches anything, and the stages read
the same rows in their own process. A data entry is a path, or a mapping:

- `{path: F, weight: W, columns: {theirs: ours}}`: `.jsonl`, `.json`, `.parquet`, `.csv`, `.arrow`, or a
  folder (a `save_to_disk` dataset, or data files laid out as on the Hub, with `config` and `split`);
- `{hub: owner/name@revision, config: C, split: S, columns: …, weight: W}`: a Hub dataset at a pinned
  revision (the network, or an already filled HF cache with `HF_HUB_OFFLINE=1`).

Rows are never held as a list here: JSON lines are read line by line (so a bad row is named by its line);
every other format goes through `datasets`, which converts it once into its Arrow cache (HF_DATASETS_CACHE)
and memory-maps it, and is read in batches of rows. (Not `streaming=True`: `datasets`' IterableDataset
imports torch, and the orchestrator must not.) With `columns`, only the named columns are kept, renamed to
ours (e.g. `{question: prompt, response: completion}`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, Field, model_validator

from core.errors import InputError
from core.hubdata import hub_commit, hub_snapshot
from core.schema import TEXT_FORMATS, DataPath, HubDatasetId, StrictModel
from rows.textfiles import BadRow, jsonl_objects

#: the `datasets` builder of each local file format (JSON lines are ours: bad rows keep their line number)
BUILDERS = {".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
BATCH_ROWS = 1024  # rows decoded from Arrow at a time
SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


class DataSource(StrictModel):
    """One data entry: a local file or folder (`path`) or a Hub dataset (`hub`), and how much of it goes
    into each epoch."""

    path: DataPath | None = None
    hub: HubDatasetId | None = Field(None, description="owner/name@revision (a commit is best; a branch is "
                                                       "resolved to its commit, which the fingerprint covers)")
    config: str | None = Field(None, description="the dataset's configuration (subset) name, for a Hub dataset or "
                                                 "a folder of data files")
    split: str = "train"
    columns: dict[str, str] | None = Field(None, description="their column -> ours; only these columns are kept")
    weight: float = Field(1.0, gt=0, description="rows per epoch = weight x rows in the source (2: twice; 0.5: a "
                                                 "seeded half)")

    @model_validator(mode="after")
    def _one_origin(self):
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of path, hub")
        if self.config is not None and self.path is not None and not Path(self.path).is_dir():
            raise ValueError("config applies to a Hub dataset or a folder of data files, not to one file")
        return self

    def label(self) -> str:
        """How messages name the source: the path, or `owner/name@revision [config/split]`."""
        if self.path is not None:
            return self.path
        return f"{self.hub} [{self.config + '/' if self.config else ''}{self.split}]"

    def is_corpus_text(self) -> bool:
        """A plain-text corpus file (.txt, .md), which only pretraining reads."""
        return self.path is not None and Path(self.path).suffix in TEXT_FORMATS


def as_source(value):
    """A plain path string is a DataSource with weight 1."""
    return {"path": value} if isinstance(value, str) else value


#: data entries, each a path or a DataSource mapping
DataSources = list[Annotated[DataSource, BeforeValidator(as_source)]]


def source_of(value: DataSource | str | Path) -> DataSource:
    """A DataSource for an entry, or for a path a stage wrote itself (e.g. a rank stage's rankings)."""
    return value if isinstance(value, DataSource) else DataSource.model_validate({"path": str(value)})


def source_rows(source: DataSource | str | Path) -> Iterator[tuple[str, dict | BadRow]]:
    """(where, row or why it is unusable) for each row: `file:line` for JSON lines, `label row i` (0-based,
    as `datasets` indexes) for the rest."""
    source = source_of(source)
    if source.is_corpus_text():
        raise InputError(f"{source.path}: a {Path(source.path).suffix} file is a pretraining corpus; rows need "
                         f".jsonl, .json, .parquet, .csv, .arrow or a dataset folder")
    if source.path is not None and Path(source.path).suffix == ".jsonl":
        rows = ((f"{source.path}:{number}", row) for number, row in jsonl_objects(Path(source.path)))
    else:
        rows = _dataset_rows(source)
    for where, row in rows:
        if source.columns is not None and isinstance(row, dict):
            row = _selected(row, source.columns, where)
        yield where, row


def _selected(row: dict, columns: dict[str, str], where: str) -> dict | BadRow:
    missing = [theirs for theirs in columns if theirs not in row]
    if missing:
        return BadRow(f"no column {missing[0]!r} (columns: {', '.join(row)}); check the entry's columns mapping")
    return {ours: row[theirs] for theirs, ours in columns.items()}


def _dataset_rows(source: DataSource) -> Iterator[tuple[str, dict]]:
    """Rows streamed by `datasets`; a file or folder it cannot read is one InputError naming it."""
    label = source.label()
    try:
        dataset = _open_dataset(source)
        index = 0
        for batch in dataset.iter(batch_size=BATCH_ROWS):
            for values in zip(*batch.values()):
                yield f"{label} row {index}", dict(zip(batch, values))
                index += 1
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow and datasets raise many types; the user needs one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"{label}: cannot read it as a dataset: {type(e).__name__}: {first}") from None


def _open_dataset(source: DataSource):
    """A memory-mapped `datasets.Dataset` of the source's rows."""
    import datasets  # here, not at the top: `rlhf status` and JSON-lines-only pipelines never pay for it

    datasets.disable_progress_bars()
    if source.hub is not None:
        return _folder_dataset(datasets, hub_snapshot(source.hub), source, label=source.label())
    path = Path(source.path)
    if path.is_dir():
        return _folder_dataset(datasets, path, source, label=source.label())
    options = {"features": _text_columns(datasets, path), "keep_default_na": False} if path.suffix == ".csv" else {}
    return datasets.load_dataset(BUILDERS[path.suffix], data_files=str(path), split="train", **options)


def _text_columns(datasets, path: Path):
    """Every column of a CSV file as a string: CSV holds text, and type inference would make "6." a float.
    A byte-order mark (Excel writes one) is not part of the first column's name."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    return datasets.Features({name: datasets.Value("string") for name in header})


def _folder_dataset(datasets, folder: Path, source: DataSource, *, label: str):
    if any((folder / marker).is_file() for marker in SAVED_DATASET_MARKERS):
        saved = datasets.load_from_disk(str(folder))  # memory-mapped Arrow
        if isinstance(saved, datasets.DatasetDict):
            if source.split not in saved:
                raise InputError(f"{label}: no split {source.split!r} (splits: {', '.join(saved)})")
            saved = saved[source.split]
        return saved
    try:
        return datasets.load_dataset(str(folder), name=source.config, split=source.split)
    except ValueError as e:  # an unknown config or split: datasets lists the ones there are
        raise InputError(f"{label}: {str(e).strip().splitlines()[0]}") from None


def source_record(source: DataSource) -> dict | None:
    """What the manifest records of a Hub source (the commit its revision named); None for a local one,
    whose files are recorded with their hashes."""
    if source.hub is None:
        return None
    repo, _, revision = source.hub.rpartition("@")
    return {"hub": repo, "revision": revision, "commit": hub_commit(source.hub), "config": source.config,
            "split": source.split, "columns": source.columns}


def hub_records(section) -> list[dict]:
    """`source_record` of every Hub source named anywhere in a config section (for the manifest)."""
    if isinstance(section, DataSource):
        return [source_record(section)] if section.hub is not None else []
    if isinstance(section, BaseModel):
        return [r for name in type(section).model_fields for r in hub_records(getattr(section, name))]
    if isinstance(section, dict):
        return [r for v in section.values() for r in hub_records(v)]
    if isinstance(section, (list, tuple)):
        return [r for v in section for r in hub_records(v)]
    return []
