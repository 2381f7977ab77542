"""A terminal chat with a causal LM directory (`rlhf chat`): each line you type is a user turn, the whole
conversation goes through the model's own chat template, and the answer streams as it is generated, to EOS.
`/reset` starts over; `/exit` or end of input quits.

    python -m stages.common.chat_repl MODEL_DIR [--max-new-tokens N] [--temperature T] [--top-p P] [--system TEXT]
                                                [--seed S]
"""

from __future__ import annotations

import argparse
import sys

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, TextStreamer
from transformers.utils import logging as transformers_logging

from stages.common.chat import load_chat_tokenizer


def main(argv: list[str] | None = None) -> int:
    """Load the model, then answer each line of standard input until /exit or its end."""
    parser = argparse.ArgumentParser(prog="rlhf chat")
    parser.add_argument("model_dir")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--system", help="a system message before the first turn")
    parser.add_argument("--seed", type=int, help="the same seed and lines give the same answers")
    args = parser.parse_args(argv)
    if args.seed is not None:
        torch.manual_seed(args.seed)

    transformers_logging.disable_progress_bar()  # the loading bar would sit in the conversation
    tokenizer = load_chat_tokenizer(args.model_dir, "auto")
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    sampling = dict(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=0) if args.temperature > 0 \
        else dict(do_sample=False)
    # the whole config, as the stages sample: no repetition penalty or top-k shipped with a checkpoint sneaks in
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, **sampling)
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    interactive = sys.stdin.isatty()
    print(f"chatting with {args.model_dir} ({'greedy' if args.temperature == 0 else f'temperature {args.temperature}'}); "
          "/reset starts over, /exit quits", flush=True)
    while True:
        line = read_turn(interactive)
        if line is None or line.strip() == "/exit":
            return 0
        if line.strip() == "/reset":
            messages = list(start)
            print("(conversation reset)", flush=True)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.strip()})
        messages.append({"role": "assistant", "content": answer(model, tokenizer, messages, config=config)})


def read_turn(interactive: bool) -> str | None:
    """The next line the user typed (None at end of input); the prompt only on a terminal."""
    try:
        return input("you> " if interactive else "")
    except EOFError:
        return None


@torch.no_grad()
def answer(model, tokenizer, messages: list[dict], *, config: GenerationConfig) -> str:
    """The model's reply to the conversation so far, streamed to standard output as it is generated."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True).to(model.device)
    print("assistant> ", end="", flush=True)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    output = model.generate(**ids, generation_config=config, streamer=streamer)
    return tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


if __name__ == "__main__":
    sys.exit(main())
