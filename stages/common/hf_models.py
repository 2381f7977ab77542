"""Loading a causal LM and its tokenizer from an HF directory, a .gguf file or the Hub (`owner/name@revision`).

A GGUF model is imported to full precision: transformers de-quantizes it, then the weights move into a
fresh model whose config has no quantization entry, so `save_pretrained` writes a normal HF artifact that
the next stage (and plain transformers) loads like any other.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import torch
from accelerate import PartialState
from deepspeed.runtime.zero.utils import is_zero_param
from huggingface_hub import hf_hub_download
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from transformers.integrations import is_deepspeed_zero3_enabled

from core.distributed import QLORA_UNDER_DEEPSPEED, deepspeed_requested
from core.errors import InputError
from sections.common import LoadingSettings, QuantizationSettings

ModelRef = Path | str  # a directory or .gguf file, or a Hub model "owner/name@revision"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Loading:
    """How models are loaded: `from_pretrained` arguments beside the source."""

    dtype: torch.dtype = torch.float32
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    quantization: QuantizationSettings | None = None

    @classmethod
    def of(cls, settings: LoadingSettings | None) -> "Loading":
        """The loading of a config's `model:` section (fp32, transformers' attention, no remote code by default)."""
        if settings is None:
            return cls()
        return cls(dtype=DTYPES[settings.dtype or "fp32"], attn_implementation=settings.attn_implementation,
                   trust_remote_code=bool(settings.trust_remote_code), quantization=settings.quantization)

    def trained_model_kwargs(self) -> dict:
        """For the `from_pretrained` of the model a stage trains: `model_kwargs`, and with QLoRA the
        bitsandbytes quantization and this process's device (a quantized model is placed as it loads)."""
        if self.quantization is None:
            return self.model_kwargs()
        settings = self.quantization
        if settings.bits == 4:
            config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=settings.quant_type,
                                        bnb_4bit_use_double_quant=settings.double_quant,
                                        bnb_4bit_compute_dtype=DTYPES[settings.compute_dtype])
        else:
            config = BitsAndBytesConfig(load_in_8bit=True)
        return self.model_kwargs() | {"quantization_config": config, "device_map": {"": PartialState().device}}

    def model_kwargs(self) -> dict:
        """For a model's `from_pretrained` (and `from_config`)."""
        kwargs = {"dtype": self.dtype}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        return kwargs | self.code_kwargs()

    def code_kwargs(self) -> dict:
        """For any `from_pretrained`: remote code only when asked for."""
        return {"trust_remote_code": True} if self.trust_remote_code else {}


DEFAULT_LOADING = Loading()


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


def parameter_count(model: torch.nn.Module) -> int:
    """Parameters of a model, counting ZeRO-3 partitions and bitsandbytes' packed 4-bit weights whole."""
    return sum(p.ds_numel if is_zero_param(p) else _unpacked_numel(p) for p in model.parameters())


def _unpacked_numel(parameter: torch.nn.Parameter) -> int:
    quant_state = getattr(parameter, "quant_state", None)  # a 4-bit weight: two values per stored byte
    return quant_state.shape.numel() if quant_state is not None else parameter.numel()


def is_partitioned(model: torch.nn.Module) -> bool:
    """Whether a model's weights are ZeRO-3 partitions (loaded under zero.Init)."""
    return any(is_zero_param(p) for p in model.parameters())


def loaded_as(model: torch.nn.Module) -> str:
    """' (loaded as ZeRO-3 partitions)' for a partitioned model, '' otherwise: for the stage's log line."""
    return " (loaded as ZeRO-3 partitions)" if is_partitioned(model) else ""


@contextlib.contextmanager
def gathered(model: torch.nn.Module):
    """A ZeRO-3-partitioned model's weights gathered whole for what runs inside (e.g. `generate` before the
    Trainer wraps it); nothing happens to a model that is whole."""
    if not is_partitioned(model):
        yield
        return
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        yield


def fit_tokenizer_to(tokenizer, model: torch.nn.Module) -> None:
    """Give the tokenizer the model's length limit (`model_max_length`), where it claims a longer one (a new
    BPE's placeholder, or a Hub tokenizer's longer figure): what it saves then tells a user the truth."""
    positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if positions and (tokenizer.model_max_length is None or tokenizer.model_max_length > positions):
        tokenizer.model_max_length = positions


def resolve_hub(source: ModelRef) -> ModelRef:
    """A Hub model `owner/name@revision` pinned to the commit its revision names now (from the network, or the
    HF cache offline), so that one stage loads config, tokenizer and weights of one commit and the manifest can
    record it; any other source as it is."""
    if not is_hub_id(source):
        return source
    repo, _, revision = source.rpartition("@")
    config_file = Path(hf_hub_download(repo, "config.json", revision=revision))
    return f"{repo}@{config_file.parent.name}"  # the cache keeps every file under snapshots/<commit>/


def hub_commit_of(source: ModelRef | None) -> dict[str, str]:
    """`{"model/hub_commit": commit}` for a resolved Hub source, {} for any other: the manifest records it."""
    return {"model/hub_commit": source.rpartition("@")[2]} if source is not None and is_hub_id(source) else {}


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether a model (or a peft model's base) was loaded quantized by bitsandbytes (QLoRA)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def keep_one_layout(model: torch.nn.Module) -> torch.nn.Module:
    """A bitsandbytes-quantized model whose 4-bit weights keep one memory layout on CPU. bitsandbytes 0.50 repacks
    a weight for its AVX512-BF16 inference kernel at the first no-grad forward in eval mode (a generation), and
    then (1) every later forward, training ones included, goes through that kernel, which has no backward: torch
    warns, and the gradients reaching the adapters below are wrong; (2) de-quantizing the packed weight gives
    garbage, so a merged artifact would too; (3) reading the state dict (a checkpoint) unpacks it again, so a
    resumed run would not end with the weights of an uninterrupted one. Kin of bitsandbytes#2078. Any other
    model is returned as it is."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def load_config(source: ModelRef, loading: Loading = DEFAULT_LOADING):
    """The model's transformers config."""
    directory, kwargs = locate(source)
    return AutoConfig.from_pretrained(directory, **kwargs, **loading.code_kwargs())


def load_tokenizer(source: ModelRef, loading: Loading = DEFAULT_LOADING):
    """The tokenizer of an HF directory, or the one stored in a GGUF file."""
    directory, kwargs = locate(source)
    return AutoTokenizer.from_pretrained(directory, **kwargs, **loading.code_kwargs())


def load_causal_lm(source: ModelRef, loading: Loading = DEFAULT_LOADING):
    """The causal LM a stage trains, from an HF directory or the Hub (quantized for QLoRA where `loading` says),
    or imported from a GGUF file (fp32 unless `loading` says)."""
    if is_gguf(source) and is_deepspeed_zero3_enabled():
        raise InputError(f"{source}: a GGUF model is imported whole, not as ZeRO-3 partitions; import it in a stage "
                         "launched without ZeRO-3 and train from that stage's artifact under ZeRO-3")
    if loading.quantization is not None and deepspeed_requested():
        raise InputError(f"model.quantization: {QLORA_UNDER_DEEPSPEED}")
    directory, kwargs = locate(source)
    model = keep_one_layout(AutoModelForCausalLM.from_pretrained(directory, **kwargs, **loading.trained_model_kwargs()))
    if not is_gguf(source):
        return model
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # de-quantized already; save_pretrained refuses a "quantized" model
    fresh = AutoModelForCausalLM.from_config(config, **loading.model_kwargs())
    fresh.load_state_dict(model.state_dict())
    fresh.generation_config = model.generation_config
    return fresh
