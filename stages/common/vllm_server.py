"""The vLLM generation process: one engine, driven over a pipe by stages/common/vllm_engine.py.

    RLHF_VLLM_PYTHON server.py MODEL_DIR SETTINGS_JSON     (started by VLLMGenerator, never by hand)

It runs in the environment that has vLLM, which may not be this package's (vLLM pins its own transformers),
so it imports only the standard library and vLLM. Requests and replies are JSON lines: requests on stdin,
replies on the pipe that was stdout when it started (vLLM's own prints go to stderr, the stage's log).

    {"op": "generate", "prompts": [[ids]], "seeds": [int] | null, "max_tokens": N, "temperature": T, "top_p": P,
     "greedy": bool}        -> {"tokens": [[ids]], "logprobs": [[float]]}   (each answer ends with EOS if it stopped)
    {"op": "reload", "path": FILE}   -> {"reload_s": seconds}   (new weights from a safetensors file, in place)
    {"op": "close"}                  -> the process exits

Sampling is exactly temperature then top-p, stopping at the tokenizer's EOS only: the model's own generation
config (repetition penalty, top-k, extra stop ids) is not applied, as in stages/common/generation.py, so the
log-probs a stage recomputes are those of the distribution that drew the tokens. `logprobs` are the sampled
tokens' log-probs under that processed distribution.

Top-p is a logits processor of ours (`nucleus_processor`), not vLLM's `top_p`: vLLM's CPU top-p sorts the whole
vocabulary at every step (73 ms of a 190 ms step on SmolLM2, 64 sequences), where the nucleus is found from a
top-k of candidates (stages/common/nucleus.py), and its nucleus is then the one the stages recompute (ties at the
edge kept whole), not a sort's.
"""

import json
import logging
import os
import sys
import time
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

#: top-p's nucleus, the stages' own definition: a file of torch only, loaded by its path because this
#: environment does not have this package
NUCLEUS = Path(__file__).with_name("nucleus.py")
#: the SamplingParams.extra_args key that carries a request's top-p to the nucleus processor
TOP_P_KEY = "rlhf_top_p"


def main() -> None:
    """Start the engine, say ready, answer requests until close or end of input."""
    model_dir, settings = sys.argv[1], json.loads(sys.argv[2])
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever vLLM prints goes to the stage's log, never into the replies
    started = time.monotonic()
    # imported after the descriptors are set, so its import-time prints go to stderr
    from vllm import LLM

    # the engine gets token ids, so it has no tokenizer, and vLLM's chat-template warm-up logs a traceback for it;
    # a filter, not a level: vLLM re-applies its logging config inside LLM(), which resets child loggers' levels
    logging.getLogger("vllm.renderers.base").addFilter(
        lambda record: not record.getMessage().startswith("Chat template warmup failed"))

    llm = LLM(model=model_dir, logits_processors=[nucleus_processor()], skip_tokenizer_init=True,
              dtype=settings["dtype"],
              max_model_len=settings["max_model_len"], enforce_eager=settings["enforce_eager"],
              gpu_memory_utilization=settings["gpu_memory_utilization"], seed=settings["seed"],
              generation_config="vllm", logprobs_mode="processed_logprobs", enable_prefix_caching=False,
              # whole prefills: a chunked one discards its sampled token, and rewinding a seeded request's CPU
              # generator then fails (vLLM 0.32: "CPU Generator does not use offset")
              enable_chunked_prefill=False)
    reply(replies, {"ready": True, "startup_s": time.monotonic() - started})
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "close":
            break
        if request["op"] == "generate":
            reply(replies, generate(llm, request, eos_token_id=settings["eos_token_id"]))
        elif request["op"] == "reload":
            reply(replies, reload(llm, request["path"]))
        else:
            reply(replies, {"error": f"unknown op {request['op']!r}"})


def reply(stream, message: dict) -> None:
    """One JSON line to the stage."""
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def generate(llm, request: dict, *, eos_token_id: int) -> dict:
    """Answers and their tokens' log-probs for token-id prompts, one seed per prompt."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    seeds = request.get("seeds") or [None] * len(request["prompts"])
    sampling = dict(temperature=0.0) if request["greedy"] else dict(
        temperature=request["temperature"], top_p=1.0, top_k=0, extra_args={TOP_P_KEY: request["top_p"]})
    # ignore_eos + stop_token_ids: stop at this EOS exactly, not at the extra ids a generation config lists
    params = [SamplingParams(max_tokens=request["max_tokens"], seed=seed, logprobs=0, ignore_eos=True,
                             stop_token_ids=[eos_token_id], detokenize=False, **sampling) for seed in seeds]
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in request["prompts"]], params, use_tqdm=False)
    tokens, logprobs = [], []
    for output in outputs:
        completion = output.outputs[0]
        tokens.append(list(completion.token_ids))
        logprobs.append([step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)])
    return {"tokens": tokens, "logprobs": logprobs}


def reload(llm, path: str) -> dict:
    """Load new weights (HF names, a safetensors file) into the running engine in place."""
    from safetensors.torch import load_file

    started = time.monotonic()
    weights = load_file(path)
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights.items())})
    return {"reload_s": time.monotonic() - started}


def request_top_p(params, _prompt_ids, _output_ids) -> float | None:
    """A request's top-p, or None when it keeps the whole distribution (greedy, top-p 1)."""
    top_p = (params.extra_args or {}).get(TOP_P_KEY, 1.0)
    return top_p if top_p < 1.0 else None


def nucleus_processor():
    """vLLM's batch-level logits processor class for top-p (requests carry it in extra_args[TOP_P_KEY]): after the
    temperature, every token below its row's nucleus floor is removed. A class made here because vLLM is
    imported only once this process's output descriptors are set."""
    import torch
    from vllm.v1.sample.logits_processor import LogitsProcessor, process_dict_updates

    spec = spec_from_file_location("rlhf_nucleus", NUCLEUS)
    nucleus = module_from_spec(spec)
    spec.loader.exec_module(nucleus)
    nucleus_floor = nucleus.nucleus_floor

    class Nucleus(LogitsProcessor):
        def __init__(self, vllm_config, device, is_pin_memory: bool):
            self.top_p_by_row: dict[int, float] = {}

        def is_argmax_invariant(self) -> bool:
            return True  # the most probable token is always in the nucleus; applied after the temperature

        def update_state(self, batch_update) -> None:
            process_dict_updates(self.top_p_by_row, batch_update, request_top_p)

        def apply(self, logits):
            if not self.top_p_by_row:
                return logits
            floor = torch.full((logits.shape[0],), float("-inf"), device=logits.device)  # rows without top-p
            for top_p in set(self.top_p_by_row.values()):
                rows = torch.tensor([row for row, value in self.top_p_by_row.items() if value == top_p])
                floor[rows] = nucleus_floor(logits[rows], top_p=top_p).to(floor.dtype)
            return logits.masked_fill_(logits < floor.unsqueeze(-1), float("-inf"))

    return Nucleus


if __name__ == "__main__":
    main()
