"""Where a stage keeps its files inside the run directory.

    RUN_DIR/.lock                         one `rlhf run` at a time
    RUN_DIR/.cache/file-hashes.json       sha256 by (path, size, mtime): a fresh run re-reads nothing
    RUN_DIR/pipeline.json                 the pipeline file the latest `rlhf run` ran (for commands given RUN_DIR)
    RUN_DIR/<stage>/spec.json             what the stage process is asked to do (written by the runner)
    RUN_DIR/<stage>/checkpoints/step-NNNNNN/   complete iff it holds CHECKPOINT_MARKER
    RUN_DIR/<stage>/artifact/             the stage's output (HF format)
    RUN_DIR/<stage>/manifest.json         written last, atomically: the stage is complete iff it is valid
    RUN_DIR/<stage>/progress.json         what the stage's latest attempt is doing
    RUN_DIR/<stage>/logs/                 attempt-N.log, metrics.jsonl, tensorboard/
    RUN_DIR/<stage>/labels/labels.jsonl   people's labels of a rank stage (stages.rank.labels)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: in the run directory: {"pipeline": the file the latest `rlhf run` ran}
RUN_RECORD = "pipeline.json"
#: what only a run directory holds at its top (besides stage directories with a spec.json)
_RUN_DIR_ENTRIES = (RUN_RECORD, ".lock", ".cache")


def run_dir_problem(run_dir: Path) -> str | None:
    """Why `run_dir` may not be used as a run directory, or None: it is the filesystem root or the home
    directory, not a directory, or holds files this project did not write (a run deletes and replaces
    things inside its run directory, so it must own it)."""
    resolved = Path(run_dir).resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
        return f"{resolved} is the {'filesystem root' if resolved == Path(resolved.anchor) else 'home directory'}; " \
               "give a directory of its own, e.g. runs/NAME"
    if not resolved.exists():
        return None
    if not resolved.is_dir():
        return f"{resolved} is a file, expected a directory"
    entries = sorted(entry.name for entry in resolved.iterdir())
    owned = any(name in _RUN_DIR_ENTRIES for name in entries) or any((resolved / n / "spec.json").is_file()
                                                                       for n in entries)
    if entries and not owned:
        return (f"{resolved} holds files rlhf did not write ({', '.join(entries[:3])}{', …' if len(entries) > 3 else ''}); "
                "give an empty or new directory")
    return None


@dataclass(frozen=True)
class StageDirs:
    """Where one stage keeps its files inside the run directory."""

    root: Path

    @classmethod
    def of(cls, run_dir: Path, stage: str) -> "StageDirs":
        """The directories of `stage` in `run_dir`."""
        return cls(Path(run_dir) / stage)

    @property
    def run_dir(self) -> Path:
        """The run directory holding this stage: what the stage's deletions must stay inside (core.removal)."""
        return self.root.parent

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def artifact(self) -> Path:
        return self.root / "artifact"

    @property
    def staged_artifact(self) -> Path:
        """Where a running stage writes its artifact before the commit swaps it in."""
        return self.root / "artifact.staging"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def progress(self) -> Path:
        return self.root / "progress.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def metrics(self) -> Path:
        """The stage's metric history (core.history)."""
        return self.logs / "metrics.jsonl"

    @property
    def labels(self) -> Path:
        """People's labels of a rank stage (stages.rank.labels): appended by `rlhf label`, never removed by a re-run
        or by `rlhf clean`."""
        return self.root / "labels" / "labels.jsonl"
