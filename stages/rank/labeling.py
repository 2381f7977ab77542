"""What people do for a rank stage through `rlhf label` (torch-free; the rank config hands it out): rank its
sampled answers on a local page or through JSONL files.

The page (label_page.html beside this module, served by pipeline.label_server) shows one prompt and its K
answers at a time, a person gives each answer a rank (1 = best, ties allowed) and submits, or skips or flags
the prompt. Every submission is appended to the stage's labels file at once (stages.rank.labels: one write,
fsynced), so closing the page or killing the server loses nothing, and the next visit goes on with the first
prompt nobody has labeled. `--export` writes the prompts with their answers as
JSONL for Label Studio or Argilla; `--import` reads rankings back (`{"prompt", "answers", "ranks"}`, the
reward kind's format), checked row by row before any is appended.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InputError
from core.layout import StageDirs
from measures.agreement import agreement
from rows.textfiles import BadRow, jsonl_objects
from stages.rank import argilla
from stages.rank.label_studio import LABEL_CONFIG, rankings_of, tasks_of
from stages.rank.labels import append_label, is_ranked, label_views, latest_by_person, ranks_problem, read_labels
from stages.sample.artifact import SAMPLES_FILE, read_samples, sample_key

#: the page people rank on
PAGE = Path(__file__).with_name("label_page.html")
#: seconds a prompt handed to one person is held back from the others (then it goes to whoever asks next)
LEASE_SECONDS = 600
#: what a submission from the page may hold
SUBMITTED_KEYS = ("key", "ranks", "skip", "flag", "labeler")


@dataclass
class LabelingTask:
    """One rank stage whose labeler is people: its samples and where their labels go.

    Several people label at once: each is handed a prompt nobody else holds (a lease of LEASE_SECONDS, kept by
    the server's one task object), and the first `double_labeled` prompts go to two different people, whose
    rankings give the agreement."""

    stage: str
    samples: list[dict]
    keys: list[str]
    labels_path: Path
    min_labeled: int
    double_labeled: int = 0
    guidelines: str | None = None
    leases: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> (labeler, when handed out)

    def people_needed(self, index: int) -> int:
        """How many different people label the prompt at `index`."""
        return 2 if index < self.double_labeled else 1

    def state(self, labeler: str | None = None) -> dict:
        """Progress (overall and per person), the agreement so far, and the next prompt for `labeler`: one
        that still needs a person, that this person has not labeled and nobody else holds (None when none)."""
        labels, people = label_views(self.labels_path)
        now = time.monotonic()
        self.leases = {key: lease for key, lease in self.leases.items() if now - lease[1] < LEASE_SECONDS}
        handled = [key in labels for key in self.keys]
        following = next((i for i, key in enumerate(self.keys) if self._open_for(i, key, labeler=labeler, people=people)), None)
        item = None
        if following is not None:
            row, key = self.samples[following], self.keys[following]
            if labeler:  # only a named person holds a prompt
                self.leases[key] = (labeler, now)
            item = {"key": key, "index": following, "prompt": row["prompt"], "answers": row["answers"]}
        return {"stage": self.stage, "total": len(self.keys), "handled": sum(handled),
                "labeled": sum(is_ranked(labels.get(key)) for key in self.keys), "min_labeled": self.min_labeled,
                "by_labeler": ranked_by_labeler(people), "agreement": agreement(ranks_by_person(people)),
                "guidelines": self.guidelines, "item": item}

    def _open_for(self, index: int, key: str, *, labeler: str | None, people: dict[str, dict[str, dict]]) -> bool:
        done = people.get(key, {})
        if any(record.get("flag") for record in done.values()) or (labeler or "") in done:
            return False
        held = self.leases.get(key)
        return len(done) < self.people_needed(index) and (held is None or held[0] == (labeler or ""))

    def submission_problem(self, record: dict) -> str | None:
        """Why a submission from the page or a file cannot be stored, or None."""
        if record.get("key") not in self.keys:
            return "unknown key: not one of this stage's sampled prompts (were the answers re-sampled?)"
        if "skip" in record and not isinstance(record["skip"], bool):
            return f"skip must be true or false, got {record['skip']!r}"
        if "flag" in record and not isinstance(record["flag"], str):
            return f"flag must be a text saying what is wrong with the prompt, got {record['flag']!r}"
        if record.get("skip") is True or (isinstance(record.get("flag"), str) and record["flag"].strip()):
            return None
        return ranks_problem(record.get("ranks"), len(self.samples[self.keys.index(record["key"])]["answers"]))

    def page(self) -> bytes:
        """The labeling page (HTML)."""
        return PAGE.read_bytes()

    def submit(self, record: dict) -> tuple[int, dict]:
        """Store one signed submission from the page: (HTTP status, response body). A prompt someone else
        labeled first is not overwritten (409); the caller serialises submissions."""
        record = {k: record[k] for k in SUBMITTED_KEYS if k in record}
        problem = self.submission_problem(record)
        if problem is not None:
            return 400, {"error": problem}
        labeler = record.get("labeler") or ""
        others = {name: r for name, r in latest_by_person(self.labels_path).get(record["key"], {}).items()
                  if name != labeler}
        if len(others) >= self.people_needed(self.keys.index(record["key"])):
            return 409, {"error": f"{', '.join(others) or 'someone'} labeled this prompt first; yours was not "
                                  "saved", **self.state(labeler)}
        append_label(self.labels_path, {**record, "source": "page"})
        self.leases.pop(record["key"], None)
        return 200, self.state(labeler)

    def export_rows(self, path: Path, *, format: str = "jsonl") -> int:  # noqa: A002 (the CLI's word)
        """The prompts nobody has labeled, with their answers, into a new file in an existing folder; how many.
        `jsonl`: `{"key", "prompt", "answers"}` lines; `label-studio`: a JSON list of Label Studio tasks, and
        the project's labeling config beside it (FILE.label-config.xml); `argilla`: FILE is a new folder in
        `rg.Dataset.to_disk`'s layout (stages/rank/argilla.py)."""
        if path.exists() or path.is_symlink():
            raise InputError(f"--export {path}: exists; export into a new file (nothing is overwritten)")
        if not path.parent.is_dir():
            raise InputError(f"--export {path}: folder {path.parent} does not exist")
        labels = read_labels(self.labels_path)
        rows = [{"key": key, "prompt": row["prompt"], "answers": row["answers"]}
                for key, row in zip(self.keys, self.samples) if key not in labels]
        if format == "argilla":
            write_argilla_folder(path, rows, guidelines=self.guidelines, name=f"{self.stage}-labels")
        elif format == "label-studio":
            config = path.with_name(path.stem + ".label-config.xml")
            if not config.exists():
                config.write_text(LABEL_CONFIG + "\n", encoding="utf-8")
            path.write_text(json.dumps(tasks_of(rows), ensure_ascii=False, indent=1), encoding="utf-8")
        else:
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return len(rows)

    def import_rows(self, path: Path, *, format: str = "jsonl") -> int:  # noqa: A002 (the CLI's word)
        """Rankings from a file, every row checked before any is appended (InputError naming file and line or
        task); how many were appended. `jsonl`: `{"prompt", "answers", "ranks"}` (a `key` optional; or `skip` /
        `flag`); `label-studio`: the JSON export of a project made from `--export --format label-studio`, one
        ranking per annotation; `argilla`: `dataset.records.to_json`'s file (or a `to_disk` folder) of a dataset
        made from `--export --format argilla`, one ranking per submitted response."""
        if format == "argilla" and path.is_dir():
            path = path / argilla.RECORDS_FILE
        if not path.is_file():
            raise InputError(f"{path}: file not found")
        if format in ("label-studio", "argilla"):
            read = rankings_of if format == "label-studio" else argilla.rankings_of
            try:
                records, found = read(json.loads(path.read_text(encoding="utf-8")))
            except ValueError as error:
                raise InputError(f"{path}: not JSON ({error})") from None
            problems = [f"{path}: {problem}" for problem in found]
            numbered = [(f"{path}: {record['key']}", record) for record in records]
        else:
            numbered, problems = [], []
            for number, row in jsonl_objects(path):
                if isinstance(row, BadRow):
                    problems.append(f"{path}:{number}: {row}")
                    continue
                key = row.get("key") or (sample_key(row["prompt"], row["answers"]) if "prompt" in row and "answers" in row else None)
                numbered.append((f"{path}:{number}", {"key": key, **{k: row[k] for k in SUBMITTED_KEYS[1:] if k in row}}))
        for where, record in numbered:
            problem = self.submission_problem(record)
            if problem is not None:
                problems.append(f"{where}: {problem}")
        if problems:
            raise InputError(problems)
        for _, record in numbered:
            append_label(self.labels_path, {**record, "source": f"import {path.name}"})
        return len(numbered)


def write_argilla_folder(folder: Path, rows: list[dict], *, guidelines: str | None, name: str) -> None:
    """A new folder in `rg.Dataset.to_disk`'s layout holding `rows` to rank (stages/rank/argilla.py)."""
    (folder / argilla.SETTINGS_FILE).parent.mkdir(parents=True)
    files = {argilla.SETTINGS_FILE: argilla.settings_of(rows, guidelines=guidelines),
             argilla.DATASET_FILE: {"name": name, "guidelines": guidelines, "allow_extra_metadata": False},
             argilla.RECORDS_FILE: argilla.records_of(rows)}
    for relative, content in files.items():
        (folder / relative).write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")


def ranked_by_labeler(people: dict[str, dict[str, dict]]) -> dict[str, int]:
    """Prompts each person has ranked (their latest submission a ranking), by name."""
    counts: dict[str, int] = {}
    for by_person in people.values():
        for name, record in by_person.items():
            counts[name] = counts.get(name, 0) + is_ranked(record)
    return dict(sorted(counts.items()))


def ranks_by_person(people: dict[str, dict[str, dict]]) -> dict[str, dict[str, list[int]]]:
    """key -> person -> ranks, for the rankings among the latest submissions (what agreement reads)."""
    return {key: {name: r["ranks"] for name, r in by_person.items() if is_ranked(r)} for key, by_person in people.items()}


def labeling_task(*, stage: str, source: str, run_dir: Path, min_labeled: int, double_labeled: int = 0,
                  guidelines: str | None = None) -> LabelingTask:
    """The task of rank stage `stage` whose labeler is people: the samples of its input `source`."""
    samples = read_samples(StageDirs.of(run_dir, source).artifact / SAMPLES_FILE)
    if not samples:
        raise InputError(f"{stage}: its input {source} has no samples yet: `rlhf run` samples them first (it stops "
                         "at this stage to wait for labels)")
    return LabelingTask(stage, samples, [sample_key(r["prompt"], r["answers"]) for r in samples],
                        StageDirs.of(run_dir, stage).labels, min_labeled, double_labeled=double_labeled,
                        guidelines=guidelines)
