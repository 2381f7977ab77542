"""Top-p's nucleus, found without sorting the vocabulary: the one definition the stages' log-probs
(stages/common/distribution.py) and the vLLM engine's sampling (stages/common/vllm_server.py) share.

It imports torch only: the engine process runs in vLLM's own environment, which has torch but not this package,
and loads this file by its path. Sorting 49k logits per position costs 20× a top-k of 256 on CPU.
"""

import torch

#: the most probable tokens nucleus_floor looks at first; positions whose nucleus is wider look at 16× more
FIRST_CANDIDATES = 256


@torch.no_grad()
def nucleus_floor(scaled: torch.Tensor, *, top_p: float) -> torch.Tensor:
    """[N] the lowest scaled logit inside each position's top-p nucleus of `scaled` [N, V] (fp32, after the
    temperature): the fewest most probable tokens whose probability reaches `top_p`, as transformers'
    TopPLogitsWarper keeps, plus any token tied with the last one (the warper drops some of a tie in whatever
    order its sort left them; here the nucleus is `scaled >= floor`, the same set every time)."""
    probs = torch.softmax(scaled, dim=-1)
    floor = torch.empty(scaled.shape[0], dtype=scaled.dtype, device=scaled.device)
    pending = torch.arange(scaled.shape[0], device=scaled.device)
    vocabulary = scaled.shape[-1]
    candidates = min(vocabulary, FIRST_CANDIDATES)
    while pending.numel():
        top_logits, top_index = scaled[pending].topk(candidates, dim=-1)
        mass = probs[pending].gather(-1, top_index).cumsum(-1)
        reached = (mass[:, -1] >= top_p) | (candidates == vocabulary)
        # a token is kept while the mass above it is below top_p: the first always, then one per such prefix
        kept = (mass[reached, :-1] < top_p).sum(-1, keepdim=True) + 1
        floor[pending[reached]] = top_logits[reached].gather(-1, kept - 1).squeeze(-1)
        pending = pending[~reached]
        candidates = min(vocabulary, candidates * 16)
    return floor
