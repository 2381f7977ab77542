"""Assemble the run report from the run directory: manifests, metric histories and progress records."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from core.atomic import atomic_write_json, atomic_write_text
from core.history import read_history, series
from core.numbers import fmt
from core.progress import format_duration
from core.schema import StageConfig
from pipeline.config import Pipeline
from pipeline.plan import stage_states
from pipeline.report import plots
from pipeline.report.document import Document, Heading, Image, Paragraph, Table, to_html, to_markdown
from pipeline.status import StatusRow, status_row

REPORT_DIR = "report"


@dataclass
class StageRecord:
    """What the report knows of one stage."""

    name: str
    kind: str
    config_class: type[StageConfig]  # the kind's config: its explanation, plots and findings
    view: StatusRow
    manifest: dict | None  # the latest completed run (may be stale)
    history: list[dict]

    @property
    def metrics(self) -> dict:
        return (self.manifest or {}).get("metrics") or {}


def stage_records(pipeline: Pipeline, histories: bool = True) -> list[StageRecord]:
    """Every stage of the pipeline, in topological order (without metric histories if not asked)."""
    records = []
    for name, status in stage_states(pipeline).items():
        history = read_history(status.dirs.metrics) if histories else []
        records.append(StageRecord(name, status.kind, type(pipeline.stages[name]), status_row(pipeline, status),
                                   status.manifest, history))
    return records


def report_state(records: list[StageRecord]) -> dict:
    """What the report was built from: each stage's state and fingerprint (a changed one means rebuild)."""
    return {r.name: {"state": r.view.state, "fingerprint": (r.manifest or {}).get("fingerprint")} for r in records}


def is_current(pipeline: Pipeline) -> bool:
    """Whether report/ was built from the run directory as it is now."""
    try:
        saved = json.loads((pipeline.run_dir / REPORT_DIR / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return saved.get("built_from") == report_state(stage_records(pipeline, histories=False))


def write_report(pipeline: Pipeline) -> Path:
    """Write RUN_DIR/report/{report.md, report.html, report.json, plots/*.png}; return report.html's path."""
    out = pipeline.run_dir / REPORT_DIR
    records = stage_records(pipeline)
    plots_cache = _PlotCache(out)
    doc = Document(f"Run report: {pipeline.path.stem}")
    doc.add(Paragraph(f"Pipeline `{pipeline.path}` · run directory `{pipeline.run_dir}` · written "
                      f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"))
    _verdict(doc, records, pipeline)
    _summary(doc, records, plots_cache)
    for record in records:
        _stage_section(doc, record, plots_cache)
    _samples(doc, records)
    _lineage(doc, records, pipeline)
    atomic_write_text(out / "report.md", to_markdown(doc, out))
    atomic_write_text(out / "report.html", to_html(doc))
    atomic_write_json(out / "report.json", {
        "built_from": report_state(records),
        "stages": {r.name: {"kind": r.kind, "state": r.view.state,
                            "metrics": {k: v for k, v in r.metrics.items() if k != "samples"}} for r in records},
        "plots": sorted(plots_cache.keys),
        "plot_keys": plots_cache.keys,
    })
    plots_cache.remove_unused()
    return out / "report.html"


class _PlotCache:
    """Redraw a plot only when what it shows changed (drawing costs ~0.3 s each; a fresh `rlhf run` after
    one stage re-ran should not redraw them all). Keys are kept in report.json."""

    def __init__(self, out: Path):
        self.out = out
        try:
            self.previous = json.loads((out / "report.json").read_text()).get("plot_keys") or {}
        except (OSError, ValueError):
            self.previous = {}
        self.keys: dict[str, str] = {}

    def get(self, name: str, key: str, draw) -> Path:
        """plots/NAME.png, drawn by `draw(path)` unless the same key drew the file that is there."""
        path = self.out / "plots" / f"{name}.png"
        relative = path.relative_to(self.out).as_posix()
        self.keys[relative] = key
        if self.previous.get(relative) != key or not path.is_file():
            draw(path)
        return path

    def remove_unused(self) -> None:
        """Plots of stages that are gone from the pipeline."""
        for path in (self.out / "plots").glob("*.png"):
            if path.relative_to(self.out).as_posix() not in self.keys:
                path.unlink()


def _history_key(record: StageRecord) -> str:
    """What a stage's plot depends on: its kind and its history (record count and the last record, which
    carries a timestamp, change whenever the history does)."""
    return json.dumps([record.kind, len(record.history), record.history[-1] if record.history else None],
                      sort_keys=True, default=str)


def _verdict(doc: Document, records: list[StageRecord], pipeline: Pipeline) -> None:
    """First: what the eval stages found (objective and guard, with the numbers that say so), then the settings
    that produced it: the `--set` overrides and each trained stage's hyperparameters."""
    doc.add(Heading(2, "Verdict"))
    judged = [r for r in records if r.config_class.gives_verdict and r.metrics.get("policies")]
    if not judged:
        doc.add(Paragraph("No eval stage has finished: nothing in this run has judged its policies independently "
                          "yet (a reward model's own scores are not a verdict)."))
    for r in judged:
        stale = "" if r.view.state == "fresh" else f" (stale: {r.view.detail or r.view.state})"
        doc.add(Heading(3, f"{r.name}{stale}"), Paragraph(r.config_class.findings(r.metrics)))
        for heading, headers, rows in r.config_class.tables(r.metrics)[:2]:
            doc.add(Paragraph(heading), Table(headers, rows))
    if pipeline.overrides:
        doc.add(Paragraph("Run with overrides: " + " ".join(f"`--set {o}`" for o in pipeline.overrides)))
    settings = [row for row in (_hyperparameters(r) for r in records) if row]
    if settings:
        doc.add(Paragraph("Hyperparameters of the trained stages (the rest of each stage's config is in its "
                          "manifest):"), Table(["stage", "kind", "settings"], settings))


#: (section, key) pairs shown as a stage's hyperparameters when its config has them
_HYPERPARAMETERS = (("train", "max_steps"), ("train", "epochs"), ("train", "batch_size"), ("train", "learning_rate"),
                    ("train", "precision"), ("ppo", "rollout_batch_size"), ("ppo", "epochs"), ("ppo", "kl"),
                    ("ppo", "ptx"), ("generation", "temperature"), ("generation", "top_p"),
                    ("generation", "num_generations"), ("", "beta"), ("", "loss_type"), ("", "lora"),
                    ("", "samples_per_prompt"), ("labeler", "function"), ("labeler", "temperature"))


def _hyperparameters(record: StageRecord) -> list[str] | None:
    """[stage, kind, "key value, ..."] from the manifest's config; None for a stage that has not run."""
    config = ((record.manifest or {}).get("config")) or {}
    shown = []
    for section, key in _HYPERPARAMETERS:
        holder = config.get(section) if section else config
        value = holder.get(key) if isinstance(holder, dict) else None
        if value is None:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {fmt(v)}" for k, v in value.items() if v is not None and not isinstance(v, list))
        shown.append(f"{f'{section}.' if section else ''}{key} {fmt(value) if not isinstance(value, str) else value}")
    return [record.name, record.kind, "; ".join(shown)] if shown else None


def _summary(doc: Document, records: list[StageRecord], plots_cache: _PlotCache) -> None:
    doc.add(Heading(2, "Summary"))
    done = [r for r in records if r.view.state == "fresh"]
    total = sum(r.manifest.get("wall_time_s") or 0 for r in done)
    doc.add(Paragraph(f"{len(done)} of {len(records)} stages complete and up to date; "
                      f"their wall time adds up to {format_duration(total)}."))
    rows = []
    for r in records:
        fresh = r.view.state == "fresh"
        headline = ", ".join(f"{k} {fmt(v)}" for k, v in r.view.metrics.items())
        rows.append([r.name, r.kind, r.view.state, headline,
                     format_duration(r.view.elapsed_s) if r.view.elapsed_s is not None else "–",
                     fmt(r.manifest.get("world_size")) if fresh else "–", r.view.detail])
    doc.add(Table(["stage", "kind", "state", "key metrics", "wall time", "processes", "details"], rows))
    timed = [(r.name, float(r.manifest["wall_time_s"]), _training_seconds(r)) for r in done
             if r.manifest.get("wall_time_s") is not None]
    if timed:
        path = plots_cache.get("time", json.dumps(timed), lambda p: plots.time_plot(timed, p))
        doc.add(Image(path, "time per stage"))


def _training_seconds(record: StageRecord) -> float | None:
    """Seconds spent in the training loop: the Trainer's runtime, or the sum of PPO iteration times."""
    if record.metrics.get("train/runtime_s") is not None:
        return float(record.metrics["train/runtime_s"])
    _, times = series(record.history, "time/iteration")
    return sum(times) if times else None


def _stage_section(doc: Document, r: StageRecord, plots_cache: _PlotCache) -> None:
    doc.add(Heading(2, f"{r.name} ({r.kind})"))
    if r.config_class.about:
        doc.add(Paragraph(r.config_class.about))
    doc.add(Paragraph(f"State: {r.view.state}" + (f" — {r.view.detail}." if r.view.detail else ".")))
    sentence = r.config_class.findings(r.metrics) if r.metrics else ""
    if sentence:
        doc.add(Paragraph(sentence))
    title = f"{r.name} ({r.kind})"
    # panels of metrics this run logged (e.g. PPO's held-out evaluations only with evaluation.every)
    panels = tuple(p for p in r.config_class.panels if any(series(r.history, key)[0] for key, _ in p.lines)) \
        or r.config_class.panels
    if r.history and panels:
        path = plots_cache.get(r.name, _history_key(r), lambda p: plots.panels_plot(r.history, panels, title, path=p))
        doc.add(Image(path, title))
    if r.metrics.get("policies"):
        key = json.dumps([r.metrics["policies"], r.metrics.get("eval/baseline")], sort_keys=True, default=str)
        path = plots_cache.get(r.name, key, lambda p: plots.policies_plot(r.metrics["policies"],
                                                                          r.metrics.get("eval/baseline"), title, path=p))
        doc.add(Image(path, title))
    for heading, headers, rows in r.config_class.tables(r.metrics):
        doc.add(Heading(3, heading), Table(headers, rows, css_class="samples" if "answers" in heading else ""))
    scalars = [(k, v) for k, v in r.metrics.items() if not isinstance(v, (list, dict))]
    if scalars:
        doc.add(Table(["metric", "value"], [[k, fmt(v)] for k, v in scalars]))


def _samples(doc: Document, records: list[StageRecord]) -> None:
    """Each kind's tables of greedy answers to the same held-out prompts (base -> SFT -> PPO with reward-model
    scores; input -> trained for sft, dpo, kto), less those of stages another table already shows."""
    tables = [t for r in records if r.manifest for t in r.config_class.sample_tables(r.name, r.manifest)]
    shown = {stage for t in tables for stage in t.shows}
    tables = [t for r in records if r.manifest and r.name not in shown
              for t in r.config_class.sample_tables(r.name, r.manifest)]
    if not tables:
        return
    doc.add(Heading(2, "Sample answers"))
    doc.add(Paragraph("Greedy answers to the same held-out prompts. Scores are the reward model's (higher is "
                      "preferred); they compare answers to one prompt, not across prompts."))
    for table in tables:
        doc.add(Heading(3, table.title), Table(table.headers, table.rows, css_class="samples"))


def _lineage(doc: Document, records: list[StageRecord], pipeline: Pipeline) -> None:
    doc.add(Heading(2, "Lineage"))
    doc.add(Paragraph("What each completed stage was built from: its fingerprint covers its config, the "
                      "contents of its data files and its inputs' fingerprints."))
    for r in records:
        m = r.manifest
        if not m:
            continue
        doc.add(Heading(3, r.name))
        inputs = ", ".join(f"{role}: {i['stage']} ({i['fingerprint'][:12]})" for role, i in (m.get("inputs") or {}).items())
        batch = r.config_class.batch_description(m.get("config") or {})
        rows = [["fingerprint", f"`{m.get('fingerprint')}`"],
                ["inputs", inputs or "none"],
                ["started / ended", f"{m.get('started_at')} / {m.get('ended_at')}"],
                ["wall time", format_duration(m.get("wall_time_s"))],
                ["processes (world size)", fmt(m.get("world_size"))],
                [batch[0], fmt(batch[1])],
                ["resumed from step", fmt(m.get("resumed_from_step"))],
                ["libraries", ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items() if v)]]
        doc.add(Table(["property", "value"], rows))
        files = [[_shown_path(f["path"], pipeline), fmt(f["size"]), f"`{f['sha256'][:16]}`"]
                 for f in m.get("data_files") or []]
        if files:
            doc.add(Table(["data file", "bytes", "sha256"], files))
        hub = [[h["hub"], h["revision"], f"`{h['commit'][:16]}`", f"{h.get('config') or 'default'} / {h['split']}"]
               for h in m.get("hub_datasets") or []]
        if hub:
            doc.add(Table(["Hub dataset", "revision", "commit", "config / split"], hub))


def _shown_path(path: str, pipeline: Pipeline) -> str:
    """A data file's path as the pipeline file would write it (relative to its folder) when that is shorter."""
    relative = os.path.relpath(path, pipeline.path.parent)
    return relative if len(relative) < len(path) else path
