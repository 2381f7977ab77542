"""`rlhf report`: RUN_DIR/report/report.md and a self-contained report.html with plots, sample answers and
lineage, built from the run directory's manifests and metric histories (torch-free)."""

from pipeline.report.build import is_current, write_report

__all__ = ["is_current", "write_report"]
