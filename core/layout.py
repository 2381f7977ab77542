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
    RUN_DIR/<stage>/labels/labels.jsonl   people's labels of a rank stage (core.labels)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: in the run directory: {"pipeline": the file the latest `rlhf run` ran}
RUN_RECORD = "pipeline.json"


@dataclass(frozen=True)
class StageDirs:
    """Where one stage keeps its files inside the run directory."""

    root: Path

    @classmethod
    def of(cls, run_dir: Path, stage: str) -> "StageDirs":
        """The directories of `stage` in `run_dir`."""
        return cls(Path(run_dir) / stage)

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
        """People's labels of a rank stage (core.labels): appended by `rlhf label`, never removed by a re-run
        or by `rlhf clean`."""
        return self.root / "labels" / "labels.jsonl"
