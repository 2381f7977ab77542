"""LoRA (peft) for the stages that train a causal LM: the adapter config, and artifacts that load with
plain transformers (adapter merged into the weights, the adapter itself kept in `adapter/`)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from accelerate import PartialState
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer

from sections.common import LoraSettings
from stages.common.hf_models import is_quantized
from stages.common.hf_trainer import save_artifact


def lora_config(settings: LoraSettings | None, task_type: str = "CAUSAL_LM"):
    """The peft LoraConfig for a causal LM, or for a sequence classifier (`SEQ_CLS`: peft then trains its new
    head whole beside the adapter); None without LoRA."""
    if settings is None:
        return None
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules, task_type=task_type)


def save_merged(peft_model, tokenizer, directory: Path) -> None:
    """`directory/adapter/` holds the adapter; `directory/` the base weights with the adapter merged in.
    Main process only (the caller gathers weights first when they are sharded)."""
    peft_model.save_pretrained(directory / "adapter")
    (directory / "adapter" / "README.md").unlink(missing_ok=True)  # peft's model card template
    merged = dequantized_merge(peft_model) if is_quantized(peft_model) else copy.deepcopy(peft_model).merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


@torch.no_grad()
def dequantized_merge(peft_model):
    """A plain model computing what the QLoRA model trained: each quantized weight de-quantized, plus the adapter's
    delta, in the compute precision of the non-quantized weights; no quantization config. Merging into the 4-bit
    weights (peft's merge) would round the trained delta away to the 4-bit grid."""
    base = peft_model.get_base_model()
    deltas = {name: module.get_delta_weight(module.active_adapters[0]).float()
              for name, module in base.named_modules() if isinstance(module, LoraLayer) and module.active_adapters}
    plain = copy.deepcopy(peft_model).unload()
    plain = plain.dequantize(dtype=torch.float32)
    for name, delta in deltas.items():
        plain.get_submodule(name).weight += delta.to(plain.get_submodule(name).weight.dtype)
    return plain


def save_trained_artifact(trainer, tokenizer, directory: Path) -> None:
    """A Trainer stage's model (a causal LM, or the reward kind's classifier): full weights + tokenizer; with
    LoRA, the weights merged and the adapter in `adapter/`."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not isinstance(model, PeftModel):
        save_artifact(trainer, directory)
    elif PartialState().is_main_process:
        save_merged(model, tokenizer, directory)


@torch.no_grad()
def merged_weights(model) -> dict[str, torch.Tensor]:
    """A causal LM's weights under the names of its HF checkpoint; for a peft model, each LoRA layer's base
    weight plus its adapter's delta (peft's `get_delta_weight`, as merging computes it), without merging into
    the model being trained. What an engine serving the current policy loads (stages/common/vllm_engine.py)."""
    if not isinstance(model, PeftModel):
        return dict(model.state_dict())
    base = model.get_base_model()
    deltas = {name: module.get_delta_weight(module.active_adapters[0])
              for name, module in base.named_modules() if isinstance(module, LoraLayer) and module.active_adapters}
    weights = {}
    for key, value in base.state_dict().items():
        if "lora_" in key or ".original_module." in key:
            continue
        name = key.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        module = name.rpartition(".")[0]
        if name.endswith(".weight") and module in deltas:
            value = value + deltas[module].to(value.dtype)
        weights[name] = value
    return weights
