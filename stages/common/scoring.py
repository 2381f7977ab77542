"""The one way a reward model scores an answer: the whole chat as the tokenizer's chat template renders it,
read by the sequence classifier's own pooling (transformers: the rightmost token that is not the pad token).

The reward stage trains on exactly these sequences, and PPO, its evaluation and the report's sample table
score through `score_chats`, so a reward artifact loaded with plain `AutoModelForSequenceClassification`
and fed the template's full text gives the score our stages give. Reading the score at the answer's first
EOS instead would disagree whenever pad = EOS or the template adds text after EOS (SmolLM2's ChatML adds
"\\n" after `<|im_end|>`, and its pad token is `<|im_end|>`).
"""

from __future__ import annotations

import torch
from torch import nn


def chat_text(tokenizer, prompt: list[dict], answer: str) -> str:
    """The prompt's messages and the answer as one chat, rendered by the tokenizer's template."""
    return tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)


def encode_chats(tokenizer, prompts: list[list[dict]], answers: list[str], *, max_length: int) -> list[list[int]]:
    """Token ids of each rendered chat; longer ones keep their end (the answer, and where it is scored)."""
    texts = [chat_text(tokenizer, prompt, answer) for prompt, answer in zip(prompts, answers)]
    side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
    try:
        return tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    finally:
        tokenizer.truncation_side = side


def pad_right(sequences: list[list[int]], pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [N, L] of token sequences, right-padded."""
    width = max(map(len, sequences))
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return input_ids.to(device), attention_mask.to(device)


@torch.no_grad()
def score_chats(reward_model: nn.Module, tokenizer, prompts: list[list[dict]], *, answers: list[str],
                max_length: int, batch_size: int, device) -> torch.Tensor:
    """[N] float32 scores of the answers to the prompts, in batches of `batch_size`."""
    scores = []
    for start in range(0, len(prompts), batch_size):
        ids = encode_chats(tokenizer, prompts[start : start + batch_size], answers[start : start + batch_size],
                           max_length=max_length)
        input_ids, attention_mask = pad_right(ids, tokenizer.pad_token_id, device)
        scores.append(reward_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float())
    return torch.cat(scores)
