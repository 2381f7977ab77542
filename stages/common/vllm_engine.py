"""A vLLM engine behind the same `generate(queries, query_mask)` as HFGenerator (stages/common/generation.py).

The engine runs in a process of its own (stages/common/vllm_server.py, in the environment RLHF_VLLM_PYTHON
names), so that vLLM's pinned transformers, its OpenMP runtime and its global RNG stay out of the stage:
- placement: on a GPU, the process's local rank picks the device (CUDA_VISIBLE_DEVICES); on a CPU, the engine
  gets this process's share of the cores (VLLM_CPU_OMP_THREADS_BIND) and a KV cache of `kv_cache_gb`. It does
  not run while the stage trains (requests are synchronous), so the two share the cores in turn;
- lifetime: one engine per stage, started once (`startup_s`), closed at the end or when the stage dies
  (parent-death signal); new weights go in place (`load_weights`, `load_directory`) instead of a restart,
  except a changed tied embedding, which vLLM 0.32 cannot reload in place;
- sampling: temperature then top-p exactly, stop at the tokenizer's EOS only, one seed per prompt drawn from
  torch's RNG, so a seeded stage gives the same answers run to run and a resumed one what an uninterrupted
  one would. `last_logprobs` are the sampled tokens' log-probs as vLLM drew them (stages recompute theirs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from core.engines import vllm_python
from core.errors import InputError
from sections.common import SamplingSettings

SERVER = Path(__file__).with_name("vllm_server.py")
#: model.dtype to vLLM's; unset loads fp32, as transformers does here (stages/common/hf_models.py)
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", None: "float32"}


class VLLMGenerator:
    """Samples answers with a vLLM engine; returns [B, R] answer ids (padding after EOS), as HFGenerator."""

    def __init__(self, model_dir: Path, tokenizer, settings: SamplingSettings, *, max_model_len: int,
                 dtype: str | None = None, seed: int = 0, log_prefix: str = "vllm",
                 tied_embedding_shape: tuple[int, int] | None = None):
        self.settings, self.pad_token_id = settings, tokenizer.pad_token_id
        self.log_prefix = log_prefix
        self.last_logprobs: torch.Tensor | None = None
        self.tied_embedding_shape = tied_embedding_shape  # (vocab, hidden) when the LM head is the embedding
        self._embedding: torch.Tensor | None = None  # the tied embedding the engine holds, once known
        self._scratch = tempfile.TemporaryDirectory(prefix="rlhf-vllm-")
        self._config_dir = Path(model_dir)
        self._engine = {"dtype": DTYPES[dtype], "max_model_len": max_model_len, "seed": seed,
                        "eos_token_id": tokenizer.eos_token_id, **settings.vllm.model_dump()}
        if self._engine["enforce_eager"] is None:
            # on 2 CPU cores compiling costs ~55 s and gains ~10 %: a stage's few thousand answers never repay it
            self._engine["enforce_eager"] = not torch.cuda.is_available()
        self.process: subprocess.Popen | None = None
        self.startup_s = self._start(Path(model_dir))

    @classmethod
    def of(cls, model_dir: Path, tokenizer, settings: SamplingSettings, *, max_model_len: int,
           dtype: str | None = None, seed: int = 0, log_prefix: str = "vllm") -> "VLLMGenerator":
        """An engine for `model_dir` whose context holds `max_model_len` tokens (prompt and answer)."""
        config = AutoConfig.from_pretrained(model_dir)
        positions = getattr(config, "max_position_embeddings", None)
        tied = (config.vocab_size, config.hidden_size) if getattr(config, "tie_word_embeddings", False) else None
        return cls(model_dir, tokenizer, settings, max_model_len=min(max_model_len, positions or max_model_len),
                   dtype=dtype, seed=seed, log_prefix=log_prefix, tied_embedding_shape=tied)

    @torch.no_grad()
    def generate(self, queries: torch.Tensor, query_mask: torch.Tensor, sample: bool | None = None) -> torch.Tensor:
        """Answers to left-padded prompts: sampled (seeded from torch's RNG), or greedy when `sample` is False."""
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(queries.cpu(), query_mask.cpu())]
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()
        reply = self._request({"op": "generate", "prompts": prompts, "seeds": seeds, "greedy": sample is False,
                               "max_tokens": self.settings.max_new_tokens, "temperature": self.settings.temperature,
                               "top_p": self.settings.top_p})
        width = max(1, *(len(tokens) for tokens in reply["tokens"]))
        answers = torch.tensor([tokens + [self.pad_token_id] * (width - len(tokens)) for tokens in reply["tokens"]])
        self.last_logprobs = torch.stack([F.pad(torch.tensor(values, dtype=torch.float32), (0, width - len(values)))
                                          for values in reply["logprobs"]])
        return answers.to(queries.device)

    def load_weights(self, state_dict: dict[str, torch.Tensor], *, source_dir: Path | None = None) -> float:
        """Put new weights (HF names, e.g. a trained policy's) into the engine; return seconds taken.

        In place, except when a tied embedding (the LM head's weight too) changed: vLLM 0.32 reloads every other
        layer in place but restores a tied LM head's old tensor, embedding included, so the engine restarts
        from the new weights instead (`source_dir` when they are that directory's)."""
        started, seen, weights = time.monotonic(), set(), {}
        for name, tensor in state_dict.items():
            if tensor.data_ptr() in seen:  # tied weights (embeddings and LM head): vLLM ties them itself
                continue
            seen.add(tensor.data_ptr())
            weights[name] = tensor.detach().to("cpu").contiguous()
        embedding = self._tied_embedding(weights)
        if embedding is not None and not torch.equal(embedding, self._held_embedding()):
            self.close_process()
            self._start(source_dir or self._write_model(weights))
        else:
            path = Path(self._scratch.name) / "weights.safetensors"
            save_file(weights, path)
            self._request({"op": "reload", "path": str(path)})
            path.unlink()
        if embedding is not None:
            self._embedding = embedding.clone()
        self.model_dir = source_dir  # whose weights the engine holds (None: pushed ones)
        return time.monotonic() - started

    def load_directory(self, model_dir: Path) -> None:
        """Serve another artifact of the same architecture (e.g. the next policy of an eval stage)."""
        if self.model_dir is not None and Path(model_dir) == self.model_dir:
            return
        weights = {}
        for file in sorted(Path(model_dir).glob("*.safetensors")):
            weights.update(load_file(file))
        if not weights:
            raise InputError(f"{model_dir}: no safetensors weights for the vLLM engine to load")
        self.load_weights(weights, source_dir=Path(model_dir))

    def _start(self, model_dir: Path) -> float:
        started = time.monotonic()
        self.process = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", vllm_python(), str(SERVER), str(model_dir), json.dumps(self._engine)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=engine_environment(self.settings))
        ready = self._read()
        self.model_dir, self._embedding = model_dir, None
        seconds = time.monotonic() - started
        print(f"[{self.log_prefix}] vLLM engine ready in {seconds:.1f} s ({ready['startup_s']:.1f} s of it loading "
              f"and compiling) for {model_dir}", flush=True)
        return seconds

    def _tied_embedding(self, weights: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self.tied_embedding_shape is None:
            return None
        found = [tensor for tensor in weights.values() if tuple(tensor.shape) == self.tied_embedding_shape]
        return found[0] if len(found) == 1 else None

    def _held_embedding(self) -> torch.Tensor:
        if self._embedding is None:  # the engine still holds a directory's weights: read its embedding
            weights = {}
            for file in sorted(self.model_dir.glob("*.safetensors")):
                weights.update(load_file(file))
            self._embedding = self._tied_embedding(weights)
        return self._embedding

    def _write_model(self, weights: dict[str, torch.Tensor]) -> Path:
        directory = Path(self._scratch.name) / "model"
        directory.mkdir(exist_ok=True)
        shutil.copy(self._config_dir / "config.json", directory / "config.json")
        save_file(weights, directory / "model.safetensors")
        return directory

    def close_process(self) -> None:
        """Stop the engine process (its cores and KV cache are free afterwards)."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "close"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()

    def close(self) -> None:
        """Stop the engine and remove its scratch files."""
        self.close_process()
        self._scratch.cleanup()

    def __enter__(self) -> "VLLMGenerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, message: dict) -> dict:
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the reply read below says it died
        return self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"[{self.log_prefix}] the vLLM engine process exited ({code}); its log is above")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"[{self.log_prefix}] vLLM engine: {reply['error']}")
        return reply


def engine_environment(settings: SamplingSettings) -> dict[str, str]:
    """The engine process's environment: in-process engine core, this process's device or cores, its KV cache."""
    env = dict(os.environ)
    env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", PYTHONSAFEPATH="1", VLLM_LOGGING_LEVEL="WARNING",
               VLLM_CPU_KVCACHE_SPACE=str(settings.vllm.kv_cache_gb))
    env.pop("PYTHONPATH", None)  # this package's modules are not the engine environment's
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if torch.cuda.is_available():
        devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        visible = devices.split(",") if devices else [str(i) for i in range(torch.cuda.device_count())]
        env["CUDA_VISIBLE_DEVICES"] = visible[local_rank % len(visible)]
    else:
        cores = sorted(os.sched_getaffinity(0))
        share = max(1, len(cores) // local_world)
        mine = cores[local_rank * share : (local_rank + 1) * share] or cores
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, mine))
        env["OMP_NUM_THREADS"] = str(len(mine))  # otherwise vLLM serves on one thread ("reducing torch threads")
    return env
