"""`rlhf export RUN_DIR STAGE --to DIR [--push-to-hub owner/name [--private]]`: a clean model folder.

The folder holds what a user of the model needs and nothing of the pipeline's own: the weights, the tokenizer
and its chat template, the generation config, the LoRA adapter when there is one (`adapter/`), not what a
kind keeps for itself (its config's `export_leaves_out`: PPO's critic); and a model card (README.md) built
from the manifests: the stage and every stage it was built from, with fingerprints, configs, data files and
their hashes, and the metrics. Only a fresh stage is exported,
into a folder that does not exist yet or is empty: nothing already there is overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from core.errors import InputError
from core.layout import StageDirs
from core.manifest import output_problems, read_manifest
from core.numbers import fmt
from pipeline.config import Pipeline
from pipeline.plan import stage_states


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


def without_local_paths(value):
    """`value` (a config) with every absolute path replaced by its file name: a model card says which file,
    never where it sat on the machine that trained the model."""
    if isinstance(value, dict):
        return {k: without_local_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_local_paths(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value


def hub_base(chain: list[dict]) -> tuple[str, str] | None:
    """(owner/name, revision) of the Hub model a lineage (`lineage()`) started from, or None when it started
    locally."""
    for m in chain:
        hub = ((m.get("config") or {}).get("model") or {}).get("hub")
        if hub:
            name, _, revision = hub.partition("@")
            return name, revision
    return None


def base_model_line(base: tuple[str, str] | None) -> str:
    """The model the lineage started from (`hub_base()`), as a card states it."""
    if base:
        return f"[{base[0]}](https://huggingface.co/{base[0]}) at revision `{base[1]}`"
    return "a local model (not on the Hub): see the lineage below"


def hub_license(base: tuple[str, str] | None) -> str | None:
    """The licence the Hub base model's own card declares, read from the HF cache only (export never goes
    online for it); None when the base is local or its card is not cached."""
    if base is None:
        return None
    # the Hub client only here and in push_to_hub: `rlhf plan/status` never import it
    from huggingface_hub import ModelCard, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        card = ModelCard.load(hf_hub_download(base[0], "README.md", revision=base[1], local_files_only=True))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError):
        return None
    return card.data.license


def usage_snippet(stage: str, *, is_classifier: bool) -> list[str]:
    """How to load the exported folder: a text classifier (a reward model's scores), else a chat pipeline."""
    if is_classifier:
        code = ["from transformers import pipeline", "", f'scorer = pipeline("text-classification", model="{stage}")',
                'print(scorer("<the rendered chat>", function_to_apply="none"))']
    else:
        code = ["from transformers import pipeline", "", f'chat = pipeline("text-generation", model="{stage}")',
                'print(chat([{"role": "user", "content": "Hello!"}], max_new_tokens=64)[0]["generated_text"][-1])']
    return ["## Usage", "", "```python", *code, "```", ""]


def model_card(manifest: dict, *, is_classifier: bool = False) -> str:
    """README.md of the exported folder, built with huggingface_hub's ModelCard: its metadata (base model,
    licence, Hub datasets, pipeline tag), a usage snippet, the metrics, and how it was made, from the
    manifests; no local paths."""
    from huggingface_hub import ModelCard, ModelCardData  # see hub_license

    chain = lineage(manifest)
    base = hub_base(chain)
    datasets = sorted({h["hub"] for m in chain for h in m.get("hub_datasets") or []})
    data = ModelCardData(library_name="transformers", base_model=base[0] if base else None,
                         license=hub_license(base), datasets=datasets or None,
                         pipeline_tag="text-classification" if is_classifier else "text-generation",
                         tags=["rlhf-pipeline", manifest["kind"]])
    metrics = {k: v for k, v in (manifest.get("metrics") or {}).items() if not isinstance(v, (list, dict))}
    lines = [f"# {manifest['stage']} ({manifest['kind']})", "",
             f"Exported by rlhf-pipeline from stage `{manifest['stage']}`, fingerprint `{manifest['fingerprint']}`, "
             f"completed {manifest.get('ended_at')} on {fmt(manifest.get('world_size'))} process(es).", "",
             f"Base model: {base_model_line(base)}", ""]
    if base and data.license is None:
        lines += ["Licence: not in the cached card of the base model; it and the data's licences apply.", ""]
    lines += usage_snippet(manifest["stage"], is_classifier=is_classifier)
    lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
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
                  json.dumps(without_local_paths(m.get("config") or {}), indent=2, sort_keys=True), "```", "",
                  "</details>", ""]
    return str(ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(lines)))


def export_stage(pipeline: Pipeline, stage: str, target: Path) -> Path:
    """Write the clean model folder of a fresh stage to `target` (new or empty); return it. Only the files the
    manifest lists are copied, each checked against its recorded sha256 first (a run directory may have been
    received from someone else or corrupted), never a symlink."""
    if stage not in pipeline.stages:
        raise InputError(f"{stage}: no such stage in {pipeline.path} (stages: {', '.join(pipeline.stages)})")
    state = stage_states(pipeline)[stage]
    if state.state != "fresh":
        raise InputError(f"{stage}: {state.state} ({state.reason}); `rlhf run {pipeline.path}` first")
    artifact = state.dirs.artifact
    if not (artifact / "config.json").is_file():
        raise InputError(f"{stage}: kind {state.kind} writes no model to export (its artifact has no config.json)")
    if target.is_symlink():
        raise InputError(f"--to {target}: a symlink; export into a new or empty folder")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"--to {target}: exists and is not empty; export into a new or empty folder")
    resolved = target.resolve()
    if resolved == pipeline.run_dir.resolve() or pipeline.run_dir.resolve() in resolved.parents:
        raise InputError(f"--to {target}: inside the run directory {pipeline.run_dir}; export outside it")
    broken = output_problems(state.dirs, state.manifest, verify_hashes=True)
    if broken:
        raise InputError(f"{stage}: its artifact does not match its manifest ({'; '.join(broken)}); nothing exported "
                         f"(`rlhf verify {pipeline.run_dir}` checks every stage)")
    listed = [Path(entry["path"]) for entry in state.manifest.get("outputs", [])]
    target.mkdir(parents=True, exist_ok=True)
    for relative in listed:
        inside = relative.relative_to(artifact.relative_to(state.dirs.root))
        if inside.parts[0] in type(pipeline.stages[stage]).export_leaves_out:
            continue
        (target / inside).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(state.dirs.root / relative, target / inside, follow_symlinks=False)
    adapter_config = target / "adapter" / "adapter_config.json"
    if adapter_config.is_file():  # peft wrote the base model's local path: name it by Hub id, or say it was local
        settings = json.loads(adapter_config.read_text())
        base = hub_base(lineage(state.manifest))
        settings["base_model_name_or_path"], settings["revision"] = base if base else (None, None)
        adapter_config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    is_classifier = "ForSequenceClassification" in " ".join(json.loads((artifact / "config.json").read_text())
                                                           .get("architectures") or [])
    (target / "README.md").write_text(model_card(state.manifest, is_classifier=is_classifier), encoding="utf-8")
    return target


def verify_run(pipeline: Pipeline) -> dict[str, list[str]]:
    """Every stage with a manifest: the output files that are missing, symlinks or differ from their recorded
    sha256 (every file read in full; [] when all match)."""
    found = {}
    for name in pipeline.stages:
        dirs = StageDirs.of(pipeline.run_dir, name)
        manifest = read_manifest(dirs)
        if manifest is not None:
            found[name] = output_problems(dirs, manifest, verify_hashes=True)
    return found


def push_to_hub(folder: Path, repo_id: str, *, private: bool) -> str:
    """Upload the exported folder to a Hub model repository (created when missing); its URL."""
    from huggingface_hub import HfApi  # only for an upload: the rest of the CLI never needs it
    from huggingface_hub.utils import RepositoryNotFoundError

    api = HfApi()
    if private:
        try:
            existing = api.repo_info(repo_id, repo_type="model")
        except RepositoryNotFoundError:
            existing = None
        if existing is not None and not existing.private:
            raise InputError(f"--push-to-hub {repo_id} --private: that repository exists and is public; uploading "
                             "would publish the model. Make it private on the Hub first, or push elsewhere")
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                               commit_message="Upload from rlhf-pipeline")
    return str(getattr(commit, "commit_url", repo_id))
