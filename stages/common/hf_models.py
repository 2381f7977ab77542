"""Loading a causal LM and its tokenizer from an HF directory, a .gguf file or the Hub (`owner/name@revision`).

A GGUF model is imported to full precision: transformers de-quantizes it, then the weights move into a
fresh model whose config has no quantization entry, so `save_pretrained` writes a normal HF artifact that
the next stage (and plain transformers) loads like any other.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

ModelRef = Path | str  # a directory or .gguf file, or a Hub model "owner/name@revision"


def is_gguf(source: ModelRef) -> bool:
    """Whether `source` is a GGUF file rather than an HF model directory or a Hub model."""
    return isinstance(source, Path) and source.suffix == ".gguf"


def model_ref(path_or_hub: str) -> ModelRef:
    """A config's model source as the loaders take it: a Path, or the Hub id as it is."""
    return path_or_hub if is_hub_id(path_or_hub) else Path(path_or_hub)


def is_hub_id(source: ModelRef) -> bool:
    """Whether `source` names a Hub model (owner/name@revision) rather than a local path."""
    return isinstance(source, str) and "@" in source and not Path(source).exists()


def locate(source: ModelRef) -> tuple[Path | str, dict]:
    """`from_pretrained` arguments: the directory, a GGUF file's folder and `gguf_file`, or the Hub repo id
    and its `revision`."""
    if is_hub_id(source):
        repo, _, revision = source.rpartition("@")
        return repo, {"revision": revision}
    source = Path(source)
    return (source.parent, {"gguf_file": source.name}) if is_gguf(source) else (source, {})


def load_config(source: ModelRef):
    """The model's transformers config."""
    directory, kwargs = locate(source)
    return AutoConfig.from_pretrained(directory, **kwargs)


def load_tokenizer(source: ModelRef):
    """The tokenizer of an HF directory, or the one stored in a GGUF file."""
    directory, kwargs = locate(source)
    return AutoTokenizer.from_pretrained(directory, **kwargs)


def load_causal_lm(source: ModelRef):
    """A float32 causal LM from an HF directory or the Hub, or imported from a GGUF file."""
    directory, kwargs = locate(source)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kwargs)
    if not is_gguf(source):
        return model
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # de-quantized already; save_pretrained refuses a "quantized" model
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict())
    fresh.generation_config = model.generation_config
    return fresh
