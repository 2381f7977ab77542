"""model: an existing model (directory, GGUF file or Hub model) saved as the stage's artifact.

    accelerate launch -m stages.model --config PIPELINE.yaml --stage NAME

Loaded as the stages load a model source (a GGUF file dequantized to full precision, a Hub model pinned to the
commit its revision names), with the chat template the config asks for, and saved with `save_pretrained`: a
plain transformers directory every other stage and plain `from_pretrained` read.
"""

from __future__ import annotations

from accelerate import PartialState

from stages.common.chat import load_chat_tokenizer
from stages.common.entry import StageContext
from stages.common.hf_models import (
    Loading,
    fit_tokenizer_to,
    hub_commit_of,
    load_causal_lm,
    model_ref,
    parameter_count,
    resolve_hub,
)
from stages.common.hf_trainer import quiet_libraries
from stages.model.config import ModelStage


def train(ctx: StageContext) -> dict:
    """Load the model and its tokenizer, save them as the artifact; return the manifest metrics."""
    cfg: ModelStage = ctx.config
    state = PartialState()
    quiet_libraries()
    loading = Loading.of(cfg.model)
    source = resolve_hub(model_ref(cfg.model.source()))
    ctx.progress.start(1, 0)
    tokenizer = load_chat_tokenizer(source, cfg.chat_template, loading)
    model = load_causal_lm(source, loading)
    fit_tokenizer_to(tokenizer, model)
    if state.is_main_process:
        ctx.staged_artifact.mkdir(parents=True)
        model.save_pretrained(ctx.staged_artifact)
        tokenizer.save_pretrained(ctx.staged_artifact)
        print(f"[{ctx.name}] {parameter_count(model) / 1e6:.1f} M parameters from {cfg.model.source()}", flush=True)
    state.wait_for_everyone()
    ctx.progress.update(1)
    return hub_commit_of(source) | {"model/parameters": parameter_count(model)}
