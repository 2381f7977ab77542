"""LoRA (peft) for the stages that train a causal LM: the adapter config, and artifacts that load with
plain transformers (adapter merged into the weights, the adapter itself kept in `adapter/`)."""

from __future__ import annotations

import copy
from pathlib import Path

from accelerate import PartialState
from peft import LoraConfig, PeftModel

from core.sections import LoraSettings
from stages.common.hf_trainer import save_artifact


def lora_config(settings: LoraSettings | None):
    """The peft LoraConfig for a causal LM (None without LoRA)."""
    if settings is None:
        return None
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules, task_type="CAUSAL_LM")


def save_merged(peft_model, tokenizer, directory: Path) -> None:
    """`directory/adapter/` holds the adapter; `directory/` the base weights with the adapter merged in.
    Main process only (the caller gathers weights first when they are sharded)."""
    peft_model.save_pretrained(directory / "adapter")
    (directory / "adapter" / "README.md").unlink(missing_ok=True)  # peft's model card template
    merged = copy.deepcopy(peft_model).merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def save_causal_lm_artifact(trainer, tokenizer, directory: Path) -> None:
    """A Trainer stage's causal LM: full weights + tokenizer; with LoRA, the weights merged and the adapter in
    `adapter/` (sft, dpo)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not isinstance(model, PeftModel):
        save_artifact(trainer, directory)
    elif PartialState().is_main_process:
        save_merged(model, tokenizer, directory)
