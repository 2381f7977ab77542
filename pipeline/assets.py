"""Where the embedded pipeline, its data and the accelerate configs are: the checkout's `configs/` and `data/`,
or, after a non-editable `pip install .`, the same folders shipped as package data of `rlhf_pipeline_assets`
(see setup.py). Found without importing anything."""

from __future__ import annotations

import importlib.util
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def assets_root() -> Path:
    """The folder holding `configs/` and `data/`."""
    if (CHECKOUT / "configs" / "pipelines").is_dir():
        return CHECKOUT
    spec = importlib.util.find_spec("rlhf_pipeline_assets")
    if spec is None or not spec.submodule_search_locations:
        return CHECKOUT  # neither: the messages about missing files name the checkout's paths
    return Path(list(spec.submodule_search_locations)[0])


EMBEDDED_PIPELINE = assets_root() / "configs" / "pipelines" / "tiny.yaml"
ACCELERATE_CONFIGS = assets_root() / "configs" / "accelerate"


def embedded_run_dir(config: str | Path) -> Path | None:
    """Where the embedded pipeline runs when installed: ./runs/tiny under the current directory (never inside
    site-packages). None for any other file, or in a checkout, where the file's own run_dir holds."""
    if assets_root() == CHECKOUT or Path(config).resolve() != EMBEDDED_PIPELINE.resolve():
        return None
    return Path.cwd() / "runs" / "tiny"
