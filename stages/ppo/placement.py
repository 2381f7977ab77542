"""Where PPO's models live under each launch: one process, DDP, or DeepSpeed ZeRO-2/3. `make_accelerator` and
`build_models` are the stage's two calls; everything DeepSpeed-specific stays in this file.

- The trained pair (PolicyAndValue) goes through `accelerator.prepare` with its one optimizer; under
  DeepSpeed the engine's micro-batch, accumulation and clipping come from the `ppo:` and `train:` sections.
- The frozen reference and reward models are moved to the device, or under DeepSpeed become inference
  engines (no optimizer): ZeRO-3 shards or a whole copy per process (`ppo.frozen_models`).
- Generation gathers a ZeRO-3-sharded policy whole (its weights only, not the critic's) for the duration of
  `generate`; a sharded frozen model generates with `synced_gpus`, so every process runs as many forward
  passes as the slowest one (each pass gathers the layers collectively).
- Artifacts are written from the full state dict (`accelerator.get_state_dict`, gathered from ZeRO-3
  shards as 16-bit weights) into freshly loaded models, so they are ordinary HF checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from pathlib import Path

import deepspeed
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from deepspeed.runtime.zero.utils import is_zero_param
from peft import get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, get_scheduler
from transformers.integrations import unset_hf_deepspeed_config
from trl.models.utils import add_hooks, remove_hooks

from core.errors import InputError
from sections.common import SamplingSettings
from stages.common.chat import load_chat_tokenizer
from stages.common.entry import check_precision
from stages.common.generation import HFGenerator
from stages.common.hf_models import DEFAULT_LOADING, Loading, keep_one_layout
from stages.common.lora import merged_weights, save_merged
from stages.common.vllm_engine import VLLMGenerator
from stages.ppo.config import PpoBatches
from stages.ppo.models import AdapterDisabled, PolicyAndValue, PpoModels, load_roles
from stages.ppo.update import Optimization

PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def make_accelerator(*, precision: str, batches: PpoBatches, max_grad_norm: float, trackers: list,
                     logs: Path, stage: str) -> Accelerator:
    """The stage's accelerator: one optimizer step per mini-batch of `batches.accumulation` micro-batches, the
    scheduler stepped by hand once per update, trackers writing under `logs`; under DeepSpeed the engine's
    micro-batch, accumulation and clipping filled in from the PPO settings."""
    check_precision(precision)
    accelerator = Accelerator(mixed_precision=PRECISION[precision], gradient_accumulation_steps=batches.accumulation,
                              step_scheduler_with_optimizer=False, log_with=trackers, project_dir=str(logs))
    if is_deepspeed(accelerator):
        configure_engine(accelerator, micro_batch_size=batches.micro, accumulation=batches.accumulation,
                         max_grad_norm=max_grad_norm, stage=stage)
    return accelerator


def build_models(accelerator: Accelerator, *, policy_dir: Path, reward_dir: Path, lora, frozen_models: str,
                 offload_frozen: bool = False, learning_rate: float, critic_learning_rate: float,
                 betas: tuple[float, float], weight_decay: float, lr_scheduler: str, warmup_steps: int,
                 updates: int, max_grad_norm: float, loading: Loading = DEFAULT_LOADING,
                 activation_checkpointing: bool = False) -> tuple[PpoModels, Optimization]:
    """The four roles, placed for this launch, and the one optimizer over the policy and the critic.

    The policy (the adapter alone with LoRA) and the critic go through `accelerator.prepare` as one module;
    the reference (the adapter switched off, with LoRA) and the reward model are frozen and placed by
    `place_frozen` (`frozen_models`: auto, shard or replicate; `offload_frozen`: kept in host memory)."""
    if offload_frozen and is_deepspeed(accelerator) and not shards_frozen(accelerator, frozen_models):
        raise InputError(f"ppo.offload_frozen under DeepSpeed offloads the frozen models' ZeRO-3 shards, but "
                         f"ppo.frozen_models is {frozen_models} under ZeRO-{zero_stage(accelerator)}: set it to shard")
    loaded = load_roles(policy_dir, reward_dir, lora=lora, frozen_context=frozen_context(accelerator, frozen_models),
                        loading=loading)
    if activation_checkpointing:  # recompute the trained pair's activations in backward: memory for compute
        loaded.policy.activation_checkpointing_enable()
        loaded.value.classifier.activation_checkpointing_enable()
    for trained_role in (loaded.policy, loaded.value):
        disable_dropout(trained_role)
    groups = [{"params": [p for p in loaded.policy.parameters() if p.requires_grad]},
              {"params": list(loaded.value.parameters()), "lr": critic_learning_rate}]
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, betas=betas, weight_decay=weight_decay)
    scheduler = get_scheduler(lr_scheduler, optimizer, num_warmup_steps=warmup_steps, num_training_steps=updates)
    trained, optimizer, scheduler = accelerator.prepare(PolicyAndValue(loaded.policy, loaded.value), optimizer,
                                                        scheduler)
    # train mode (dropout is off, so the log-probs of a rollout and of its update agree): transformers only
    # recomputes checkpointed activations in a module that is training
    trained.train()
    placement = dict(mode=frozen_models, offload=offload_frozen)
    if lora is None:
        reference = place_frozen(loaded.reference, accelerator, **placement,
                                 hidden_size=loaded.reference.config.get_text_config().hidden_size)
    else:
        reference = loaded.reference
    reward = place_frozen(loaded.reward, accelerator, **placement,
                          hidden_size=loaded.reward.config.get_text_config().hidden_size)
    in_use = contextlib.nullcontext
    if offload_frozen and not is_deepspeed(accelerator):
        offloaded = [reward] if lora is not None else [reference, reward]
        in_use = functools.partial(on_device, offloaded, accelerator.device)
    models = PpoModels(trained, reference, reward, autocast=accelerator.autocast, frozen_in_use=in_use,
                       reward_tokenizer=load_chat_tokenizer(reward_dir, "auto", loading))
    return models, Optimization(accelerator, optimizer, scheduler, max_grad_norm, deepspeed=is_deepspeed(accelerator))


class Generators:
    """Samplers for the trained policy and the frozen SFT policy (the reference), under any launch: with ZeRO-3
    the policy is gathered whole for each `generate`, a sharded reference generates with `synced_gpus`.

    With a vLLM `engine`, the policy samples there while it is open: `refresh(step)` gives it the policy's
    current weights (LoRA merged) when they changed since it last had them; `close()` hands back its memory."""

    def __init__(self, models: PpoModels, accelerator: Accelerator, tokenizer, *, max_new_tokens: int,
                 temperature: float, top_p: float, batch_size: int | None = None, engine: VLLMGenerator | None = None):
        self.models, self.accelerator, self.tokenizer = models, accelerator, tokenizer
        self.settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             batch_size=batch_size)
        self.engine, self.engine_step = engine, 0  # the engine starts with the weights of step 0, the SFT policy's

    def of(self, role: str, sample: bool = True) -> HFGenerator | VLLMGenerator:
        """A generator for "policy" (the trained one) or "reference"; greedy unless `sample`."""
        if role == "policy" and sample and self.engine is not None:
            return self.engine
        if role == "policy":
            return HFGenerator(lambda: policy_for_generation(self.models.trained, self.accelerator), self.tokenizer,
                               sample=sample, **self.settings)
        return HFGenerator(lambda: reference_for_generation(self.models.reference, self.models.trained,
                                                            self.accelerator),
                           self.tokenizer, sample=sample, **self.settings,
                           synced_gpus=needs_synced_generation(self.models.reference, self.accelerator))

    def refresh(self, step: int) -> float:
        """Give the engine the policy's weights after `step` updates unless it has them; return seconds taken."""
        if self.engine is None or step == self.engine_step:
            return 0.0
        policy = self.accelerator.unwrap_model(self.models.trained).policy
        seconds = self.engine.load_weights(merged_weights(policy))
        self.engine_step = step
        return seconds

    def close(self) -> None:
        """Stop the engine: the final comparison samples both policies with generate, alike."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def rollout_engine(accelerator: Accelerator, *, policy_dir: Path, tokenizer, settings: SamplingSettings,
                   max_model_len: int, precision: str, seed: int, stage: str) -> VLLMGenerator | None:
    """The vLLM engine PPO's policy samples with (`generation.engine: vllm`), one per process, in the training's
    precision; None for transformers' generate. ZeRO-3 is refused: each refresh would gather the whole policy
    on every process, which is what ZeRO-3 was chosen to avoid."""
    if settings.engine != "vllm":
        return None
    if zero_stage(accelerator) == 3:
        raise InputError(f"{stage}: generation.engine vllm with DeepSpeed ZeRO-3 is not supported (the engine needs "
                         "the whole policy on each process); use ZeRO-2, DDP or engine hf")
    return VLLMGenerator.of(policy_dir, tokenizer, settings, max_model_len=max_model_len, dtype=precision,
                            seed=seed + accelerator.process_index, log_prefix=stage)


def disable_dropout(model: nn.Module) -> None:
    """Dropout off in every layer and in attention (as TRL does for its RL trainers, plus the attention
    probabilities' dropout that transformers applies from the config in training mode)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def is_deepspeed(accelerator: Accelerator) -> bool:
    """Whether this launch runs DeepSpeed."""
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def zero_stage(accelerator: Accelerator) -> int:
    """The ZeRO stage of this launch (0 without DeepSpeed)."""
    if not is_deepspeed(accelerator):
        return 0
    return int(accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]["stage"])


def configure_engine(accelerator: Accelerator, *, micro_batch_size: int, accumulation: int, max_grad_norm: float,
                     stage: str) -> None:
    """Fill the DeepSpeed config from the PPO settings before `prepare` (no DataLoader is prepared, so accelerate
    cannot infer the micro-batch): answers per forward, forwards per optimizer step, gradient clipping.
    ZeRO-3 must be able to gather 16-bit weights, or no artifact could be written at the end."""
    plugin = accelerator.state.deepspeed_plugin
    config = plugin.deepspeed_config
    if config["zero_optimization"]["stage"] == 3 and not plugin.zero3_save_16bit_model:
        raise InputError(f"stage {stage}: PPO under ZeRO-3 needs `zero3_save_16bit_model: true` in the accelerate "
                         "config (stage3_gather_16bit_weights_on_model_save), or its weights cannot be saved")
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_accumulation_steps"] = accumulation
    config["train_batch_size"] = micro_batch_size * accumulation * accelerator.num_processes
    config["gradient_clipping"] = max_grad_norm


def shards_frozen(accelerator, mode: str) -> bool:
    """Whether the frozen models become ZeRO-3 shards: `ppo.frozen_models` shard, or auto under ZeRO-3."""
    return is_deepspeed(accelerator) and (mode == "shard" or (mode == "auto" and zero_stage(accelerator) == 3))


def frozen_context(accelerator, mode: str):
    """The context to load the frozen models in: whole, unless they will be shards anyway (under ZeRO-3 with
    zero3_init_flag, transformers would otherwise load them as partitions)."""
    return contextlib.nullcontext() if shards_frozen(accelerator, mode) else no_zero3_init(accelerator)


def place_frozen(model: nn.Module, accelerator: Accelerator, *, mode: str, offload: bool = False,
                 hidden_size: int) -> nn.Module:
    """A frozen role on this process: on the device (in host memory with `offload`, until `on_device` brings
    it), or a DeepSpeed inference engine, sharded with ZeRO-3 (`mode` shard, or auto under ZeRO-3; with
    `offload` the shards live in host memory, DeepSpeed's offload_param) or replicated (stage 0: whole, in
    the engine's precision). Adapted from TRL's `prepare_deepspeed`, which offers only the automatic choice."""
    if not is_deepspeed(accelerator):
        return model if offload else model.to(accelerator.device)
    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    shard = shards_frozen(accelerator, mode)
    for training_only in ("optimizer", "scheduler"):  # no optimizer: DeepSpeed would build one from these
        config.pop(training_only, None)
    config["zero_optimization"].pop("offload_optimizer", None)
    config["zero_optimization"]["stage"] = 3 if shard else 0
    if shard:
        config["zero_optimization"].update(reduce_bucket_size=hidden_size * hidden_size,
                                           stage3_param_persistence_threshold=10 * hidden_size,
                                           stage3_prefetch_bucket_size=int(0.9 * hidden_size * hidden_size))
    if offload:  # otherwise the shards follow the training's own offload_param
        config["zero_optimization"]["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


@contextlib.contextmanager
def on_device(models: list[nn.Module], device: torch.device):
    """The offloaded frozen models on `device` meanwhile, back in host memory after (and the accelerator's
    cache emptied, so the training phase gets the memory back)."""
    for model in models:
        model.to(device)
    try:
        yield
    finally:
        for model in models:
            model.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def is_sharded(model: nn.Module) -> bool:
    """Whether a module's weights are ZeRO-3 partitions (a forward pass then gathers them collectively)."""
    return any(is_zero_param(p) for p in model.parameters())


@contextlib.contextmanager
def policy_for_generation(trained: nn.Module, accelerator):
    """The policy as a plain causal LM for `generate`, under the training's mixed precision (the unwrapped
    model's forward is not autocast): it samples from the distribution its log-probs are computed under.
    With ZeRO-3 the policy's weights alone (not the critic's) are gathered whole meanwhile, and ZeRO-3's
    per-module hooks are lifted (TRL's remove_hooks / add_hooks, as its own generation does), so the forward
    passes of `generate` use the gathered weights as they are."""
    policy = accelerator.unwrap_model(trained).policy
    if zero_stage(accelerator) != 3:
        with accelerator.autocast():
            yield policy
        return
    with deepspeed.zero.GatheredParameters(list(policy.parameters())), accelerator.autocast():
        remove_hooks(trained)
        try:
            yield policy
        finally:
            add_hooks(trained)


@contextlib.contextmanager
def reference_for_generation(reference: nn.Module, trained: nn.Module, accelerator):
    """The frozen reference as a causal LM for `generate`. With LoRA it is the policy with its adapter off."""
    if isinstance(reference, AdapterDisabled):
        with policy_for_generation(trained, accelerator) as policy, policy.disable_adapter():
            yield policy
    else:
        with accelerator.autocast():
            yield accelerator.unwrap_model(reference)


def needs_synced_generation(model: nn.Module, accelerator) -> bool:
    """Whether `generate` needs `synced_gpus`: the model's forward passes are collective (ZeRO-3 shards, several
    processes)."""
    return accelerator.num_processes > 1 and is_sharded(model)


def part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix.`, without it."""
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load a full state dict, allowing only the tied copies (e.g. lm_head = embeddings) to be missing."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    untied = [k for k in missing if not _is_tied(model, k, state)]
    if unexpected or untied:
        raise RuntimeError(f"{what}: weights do not match the model (missing {untied[:5]}, unexpected {unexpected[:5]})")


def load_adapter_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load the LoRA weights of a full state dict into a peft model whose base is loaded already (QLoRA: the
    quantized base is rebuilt as it loaded, not copied through the state dict's packed 4-bit entries)."""
    adapter = {key: value for key, value in state.items() if "lora_" in key}
    missing, unexpected = model.load_state_dict(adapter, strict=False)
    missing = [key for key in missing if "lora_" in key]
    if unexpected or missing or not adapter:
        raise RuntimeError(f"policy adapter: weights do not match the model (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]})")


def _is_tied(model: nn.Module, key: str, state: dict) -> bool:
    """Whether parameter `key` shares its storage with another parameter that `state` does hold."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(key)
    return target is not None and any(p is target for name, p in params.items() if name != key and name in state)


@contextlib.contextmanager
def no_zero3_init(accelerator):
    """A context in which transformers builds models whole, not as ZeRO-3 partitions (frozen replicas, and the
    models artifacts are written from). accelerate's `zero3_init_context_manager` does not do it when
    `zero3_init_flag` is already off, yet transformers still partitions while a ZeRO-3 config is registered
    (accelerate registers it whatever the flag)."""
    if not is_deepspeed(accelerator):
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:  # accelerate registers the config again, as it did when the plugin was set up
        accelerator.state.deepspeed_plugin.set_deepspeed_weakref()


def dtype_of(state: dict[str, torch.Tensor]) -> torch.dtype:
    """The floating-point dtype the weights were trained in (fp32 master weights, or ZeRO-3's 16-bit copy)."""
    return next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)


def write_artifact(state: dict[str, torch.Tensor], *, policy_dir: Path, reward_dir: Path, lora, tokenizer,
                   directory: Path, loading: Loading = DEFAULT_LOADING) -> None:
    """The policy (LoRA merged, adapter kept in adapter/) and the critic (critic/) as HF checkpoints, built from
    the full state dict of the trained pair. Main process only."""
    dtype = dtype_of(state)
    if loading.quantization is None:
        policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=dtype, **loading.code_kwargs())
    else:  # QLoRA: the base quantized again as it trained (frozen, so the same), the adapter from the state
        policy = keep_one_layout(AutoModelForCausalLM.from_pretrained(policy_dir, **loading.trained_model_kwargs()))
    if lora is not None:
        policy = get_peft_model(policy, lora)
    if loading.quantization is None:
        load_weights(policy, part(state, "policy"), "policy")
    else:
        load_adapter_weights(policy, part(state, "policy"))
    if lora is not None:
        save_merged(policy, tokenizer, directory)
    else:
        policy.config.use_cache = True
        policy.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    critic = AutoModelForSequenceClassification.from_pretrained(reward_dir, dtype=dtype, **loading.code_kwargs())
    load_weights(critic, part(state, "value.classifier"), "critic")
    critic.save_pretrained(directory / "critic")
    tokenizer.save_pretrained(directory / "critic")
