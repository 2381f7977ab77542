"""Loading a causal LM and its tokenizer from an HF directory or a .gguf file.

A GGUF model is imported to full precision: transformers de-quantizes it, then the weights move into a
fresh model whose config has no quantization entry, so `save_pretrained` writes a normal HF artifact that
the next stage (and plain transformers) loads like any other.
"""

from __future__ import annotations

from pathlib import Path

import torch


def is_gguf(source: Path) -> bool:
    """Whether `source` is a GGUF file rather than an HF model directory."""
    return source.suffix == ".gguf"


def _where(source: Path) -> tuple[Path, dict]:
    return (source.parent, {"gguf_file": source.name}) if is_gguf(source) else (source, {})


def load_config(source: Path):
    """The model's transformers config."""
    from transformers import AutoConfig

    directory, kwargs = _where(source)
    return AutoConfig.from_pretrained(directory, **kwargs)


def load_tokenizer(source: Path):
    """The tokenizer of an HF directory, or the one stored in a GGUF file."""
    from transformers import AutoTokenizer

    directory, kwargs = _where(source)
    return AutoTokenizer.from_pretrained(directory, **kwargs)


def load_causal_lm(source: Path):
    """A float32 causal LM from an HF directory, or imported from a GGUF file."""
    from transformers import AutoModelForCausalLM

    directory, kwargs = _where(source)
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
