"""What the preference kinds' stages (dpo, kto) share: the policy and reference they load, their rows (with a
rank stage's rankings), held-out samples before and after, and the artifact."""

from __future__ import annotations

from rows.datasources import source_of
from stages.common.chat import check_context_length, load_chat_tokenizer, load_rows
from stages.common.entry import StageContext
from stages.common.hf_models import Loading, load_causal_lm, loaded_as, model_ref, parameter_count, resolve_hub
from stages.rank.artifact import RANKINGS_FILE


def policy_source(ctx: StageContext):
    """The policy's starting model: the upstream stage's artifact, or the config's model source (a Hub model
    pinned to its commit)."""
    return ctx.inputs.get("model") or resolve_hub(model_ref(ctx.config.model.source()))


def preference_rows(ctx: StageContext, parse):
    """The stage's rows (stages.common.chat.ChatRows), a rank stage's rankings among the training sources."""
    cfg = ctx.config
    data = cfg.data
    if "rankings" in ctx.inputs:
        data = data.model_copy(update={"train": [*data.train, source_of(ctx.inputs["rankings"] / RANKINGS_FILE)]})
    rows = load_rows(data, parse, cfg.train.seed, skip_bad_rows=cfg.data.skip_bad_rows)
    if rows.skipped:
        print(f"[{ctx.name}] skipped {rows.skipped} bad rows (data.skip_bad_rows)", flush=True)
    return rows


def policy_and_reference(ctx: StageContext, *, precompute_ref_log_probs: bool):
    """(source, tokenizer, policy, reference): `inputs.reference`, else a second copy of the policy's source,
    or None where TRL needs no reference model (LoRA switches the adapter off; precomputed log-probs come from
    the policy before training)."""
    cfg = ctx.config
    source, loading = policy_source(ctx), Loading.of(cfg.model)
    check_context_length(source, cfg.data.max_length, "data.max_length", loading=loading)
    tokenizer = load_chat_tokenizer(source, cfg.chat_template, loading)
    model = load_causal_lm(source, loading)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if "reference" in ctx.inputs:
        reference = load_causal_lm(ctx.inputs["reference"], loading)
    elif cfg.lora is None and not precompute_ref_log_probs:
        # without one, TRL would reload the policy from `config._name_or_path`: a GGUF file's folder (which
        # transformers cannot read), a Hub model without its pinned commit, no remote code
        reference = load_causal_lm(source, loading)
    else:
        reference = None  # LoRA: the adapter switched off; precomputed: the policy itself, before training
    print(f"[{ctx.name}] {parameter_count(model) / 1e6:.2f} M parameters from {source}{loaded_as(model)}; reference: "
          f"{ctx.inputs.get('reference') or ('the policy, adapter off' if cfg.lora else 'the policy as loaded')}",
          flush=True)
    return source, tokenizer, model, reference
