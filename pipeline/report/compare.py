"""`rlhf report RUN_A RUN_B … --to DIR`: several runs side by side (torch-free) — what differs in their
settings, each stage's headline metrics, the eval stages' verdict tables, and each shared stage's first
curve drawn for every run on one plot. Each run is read as it was made (its recorded overrides)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from core.atomic import atomic_write_text
from core.fingerprint import payload_changes
from core.history import series
from core.numbers import fmt
from pipeline.config import Pipeline
from pipeline.report import plots
from pipeline.report.build import StageRecord, stage_records
from pipeline.report.document import Document, Heading, Image, Paragraph, Table, to_html, to_markdown


def run_labels(pipelines: list[Pipeline]) -> list[str]:
    """Short names for the runs: their run directories' names, made unique with their parents' when equal."""
    names = [p.run_dir.name for p in pipelines]
    if len(set(names)) == len(names):
        return names
    return [f"{p.run_dir.parent.name}/{p.run_dir.name}" for p in pipelines]


def _settings(doc: Document, labels: list[str], runs: list[dict[str, StageRecord]], *,
              pipelines: list[Pipeline]) -> None:
    """Overrides of each run, then per stage the config keys whose values differ between the runs."""
    doc.add(Heading(2, "Settings"))
    doc.add(Table(["run", "pipeline file", "overrides"],
                  [[label, str(p.path), " ".join(f"`--set {o}`" for o in p.overrides) or "none"]
                   for label, p in zip(labels, pipelines)]))
    rows = []
    for name in _stage_names(runs):
        configs = [((r.get(name) and r[name].manifest) or {}).get("config") for r in runs]
        present = [c for c in configs if c is not None]
        keys = sorted({key for c in present[1:] for key in payload_changes(present[0], c)})
        for key in keys:
            rows.append([name, key, *(fmt(_at(c, key)) if c is not None else "–" for c in configs)])
    if rows:
        doc.add(Paragraph("Config keys whose values differ between the runs (from each stage's manifest):"),
                Table(["stage", "key", *labels], rows))
    else:
        doc.add(Paragraph("The stages the runs share have the same configs."))


def _at(config: dict, key: str):
    """The value at a dotted key path of a config (list items by index); None where it is absent."""
    node = config
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return json.dumps(node) if isinstance(node, (dict, list)) else node


def _stage_names(runs: list[dict[str, StageRecord]]) -> list[str]:
    """Every stage name of the runs, in the first run's order, then the others' new ones."""
    names: list[str] = []
    for run in runs:
        names += [n for n in run if n not in names]
    return names


def _metrics(doc: Document, labels: list[str], runs: list[dict[str, StageRecord]]) -> None:
    """Each stage's headline metrics (its kind's), one column per run."""
    rows = []
    for name in _stage_names(runs):
        record = next(r[name] for r in runs if name in r)
        for key in record.config_class.headline:
            values = [r[name].metrics.get(key) if name in r else None for r in runs]
            if any(v is not None for v in values):
                rows.append([name, key, *(fmt(v) if v is not None else "–" for v in values)])
    doc.add(Heading(2, "Headline metrics"), Table(["stage", "metric", *labels], rows))


def _verdicts(doc: Document, labels: list[str], runs: list[dict[str, StageRecord]]) -> None:
    """The verdict tables of the eval stages, each run's rows under its name."""
    for name in _stage_names(runs):
        judged = [(label, r[name]) for label, r in zip(labels, runs)
                  if name in r and r[name].config_class.gives_verdict and r[name].metrics.get("policies")]
        if not judged:
            continue
        doc.add(Heading(2, f"{name}: the verdict in each run"))
        for label, record in judged:
            doc.add(Paragraph(f"**{label}**: {record.config_class.findings(record.metrics)}"))
        first = judged[0][1].config_class.tables(judged[0][1].metrics)
        if first:
            heading, headers, _ = first[0]
            rows = [[label, *row] for label, record in judged
                    for row in (record.config_class.tables(record.metrics) or [(None, None, [])])[0][2]]
            doc.add(Paragraph(heading), Table(["run", *headers], rows))


def _curves(doc: Document, labels: list[str], runs: list[dict[str, StageRecord]], *, out: Path) -> None:
    """For each stage with a history in two or more runs: the first line of its kind's first panel, per run."""
    added = False
    for name in _stage_names(runs):
        records = [(label, r[name]) for label, r in zip(labels, runs) if name in r and r[name].history]
        panels = records[0][1].config_class.panels if records else ()
        if len(records) < 2 or not panels:
            continue
        key, what = panels[0].lines[0]
        curves = {label: series(record.history, key) for label, record in records}
        if sum(1 for steps, _ in curves.values() if steps) < 2:
            continue
        if not added:
            doc.add(Heading(2, "Curves"))
            added = True
        title = f"{name}: {what} ({key})"
        doc.add(Image(plots.runs_plot(curves, title, ylabel=panels[0].ylabel, path=out / "plots" / f"{name}.png"),
                      title))


def write_comparison(pipelines: list[Pipeline], out: Path) -> Path:
    """Write OUT/compare.md and OUT/compare.html (with OUT/plots/) for the runs; return compare.html."""
    labels = run_labels(pipelines)
    runs = [{r.name: r for r in stage_records(p)} for p in pipelines]
    doc = Document(f"Comparison of {len(pipelines)} runs: {', '.join(labels)}")
    doc.add(Paragraph("Run directories: " + "; ".join(f"{label} = `{p.run_dir}`" for label, p in zip(labels, pipelines))
                      + f" · written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"))
    _verdicts(doc, labels, runs)
    _settings(doc, labels, runs, pipelines=pipelines)
    _metrics(doc, labels, runs)
    _curves(doc, labels, runs, out=out)
    atomic_write_text(out / "compare.md", to_markdown(doc, out))
    atomic_write_text(out / "compare.html", to_html(doc))
    return out / "compare.html"
