"""`rlhf export RUN_DIR STAGE --to DIR [--push-to-hub owner/name [--private]]`: a clean model folder.

The folder holds what a user of the model needs and nothing of the pipeline's own: the weights, the tokenizer
and its chat template, the generation config, the LoRA adapter when there is one (`adapter/`), not PPO's
critic; and a model card (README.md) built from the manifests: the stage and every stage it was built from,
with fingerprints, configs, data files and their hashes, and the metrics. Only a fresh stage is exported,
into a folder that does not exist yet or is empty: nothing already there is overwritten.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from core.errors import InputError
from core.layout import StageDirs
from core.manifest import read_manifest
from core.numbers import fmt
from pipeline.config import Pipeline
from pipeline.plan import stage_states

#: artifact entries that are the pipeline's, not the model's
LEFT_OUT = ("critic",)


def lineage(manifest: dict) -> list[dict]:
    """The manifest and those of every stage it was built from, nearest first (each once)."""
    found, todo, seen = [], [manifest], set()
    while todo:
        current = todo.pop(0)
        if current["fingerprint"] in seen:
            continue
        seen.add(current["fingerprint"])
        found.append(current)
        for source in (current.get("inputs") or {}).values():
            upstream = read_manifest(StageDirs(Path(source["artifact"]).parent))
            if upstream is not None:
                todo.append(upstream)
    return found


def model_card(manifest: dict) -> str:
    """README.md of the exported folder: what the model is and how it was made, from the manifests."""
    chain = lineage(manifest)
    metrics = {k: v for k, v in (manifest.get("metrics") or {}).items() if not isinstance(v, (list, dict))}
    lines = ["---", "library_name: transformers", f"tags: [rlhf-pipeline, {manifest['kind']}]", "---", "",
             f"# {manifest['stage']} ({manifest['kind']})", "",
             f"Exported by rlhf-pipeline from stage `{manifest['stage']}`, fingerprint `{manifest['fingerprint']}`, "
             f"completed {manifest.get('ended_at')} on {fmt(manifest.get('world_size'))} process(es).", "",
             "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in metrics.items()]
    lines += ["", "## Lineage", "", "Each stage, nearest first: its fingerprint covers its config, the contents of "
              "its data files and its inputs' fingerprints.", ""]
    for m in chain:
        inputs = ", ".join(f"{role}: `{i['stage']}` ({i['fingerprint'][:12]})" for role, i in (m.get("inputs") or {}).items())
        lines += [f"### {m['stage']} ({m['kind']})", "", f"- fingerprint: `{m['fingerprint']}`",
                  f"- inputs: {inputs or 'none'}",
                  f"- libraries: {', '.join(f'{k} {v}' for k, v in (m.get('versions') or {}).items() if v)}", ""]
        files = m.get("data_files") or []
        if files:
            lines += ["| data file | bytes | sha256 |", "|---|---|---|"]
            lines += [f"| {Path(f['path']).name} | {fmt(f['size'])} | `{f['sha256']}` |" for f in files]
            lines.append("")
        hub = m.get("hub_datasets") or []
        if hub:
            lines += ["| Hub dataset | revision | commit | config / split |", "|---|---|---|---|"]
            lines += [f"| [{h['hub']}](https://huggingface.co/datasets/{h['hub']}) | {h['revision']} | `{h['commit']}` | "
                      f"{h.get('config') or 'default'} / {h['split']} |" for h in hub]
            lines.append("")
        lines += ["<details><summary>config</summary>", "", "```json",
                  json.dumps(m.get("config") or {}, indent=2, sort_keys=True), "```", "", "</details>", ""]
    return "\n".join(lines)


def export_stage(pipeline: Pipeline, stage: str, target: Path) -> Path:
    """Write the clean model folder of a fresh stage to `target` (new or empty); return it."""
    if stage not in pipeline.stages:
        raise InputError(f"{stage}: no such stage in {pipeline.path} (stages: {', '.join(pipeline.stages)})")
    state = stage_states(pipeline)[stage]
    if state.state != "fresh":
        raise InputError(f"{stage}: {state.state} ({state.reason}); `rlhf run {pipeline.path}` first")
    artifact = state.dirs.artifact
    if not (artifact / "config.json").is_file():
        raise InputError(f"{stage}: kind {state.kind} writes no model to export (its artifact has no config.json)")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"--to {target}: exists and is not empty; export into a new or empty folder")
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(artifact.iterdir()):
        if entry.name in LEFT_OUT:
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name)
        else:
            shutil.copy2(entry, target / entry.name)
    (target / "README.md").write_text(model_card(state.manifest), encoding="utf-8")
    return target


def push_to_hub(folder: Path, repo_id: str, *, private: bool) -> str:
    """Upload the exported folder to a Hub model repository (created when missing); its URL."""
    from huggingface_hub import HfApi  # only for an upload: the rest of the CLI never needs it

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                               commit_message="Upload from rlhf-pipeline")
    return str(getattr(commit, "commit_url", repo_id))
