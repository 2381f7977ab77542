"""PPO's per-token log-probs and entropies, computed in chunks: the same numbers and gradients as the whole
computation, without keeping full-vocabulary fp32 copies for backward."""

from __future__ import annotations

import pytest
import torch
from transformers import TopPLogitsWarper

from stages.common.distribution import sampling_logits, token_entropy, token_logprobs

B, T, V = 2, 13, 300


@pytest.fixture
def logits():
    torch.manual_seed(0)
    return (3 * torch.randn(B, T, V)).to(torch.bfloat16).requires_grad_()


def whole_logprobs(logits, tokens, temperature, top_p):
    scaled = logits.float() / temperature
    if top_p < 1:
        scaled = TopPLogitsWarper(top_p, filter_value=-1e9)(None, scaled.reshape(-1, V)).view_as(scaled)
    return torch.log_softmax(scaled, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def saved_bytes(compute) -> tuple[torch.Tensor, int]:
    """What `compute()` returns, and the bytes autograd keeps for its backward."""
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = compute()
    return out, sum(sizes)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_chunked_log_probs_and_gradients_equal_the_whole_computation(logits, temperature, top_p):
    tokens = torch.randint(0, V, (B, T))
    whole = whole_logprobs(logits, tokens, temperature, top_p)
    chunked = token_logprobs(logits, tokens, temperature=temperature, top_p=top_p, chunk_positions=4)
    assert chunked.dtype == torch.float32 and chunked.shape == (B, T)
    assert torch.allclose(chunked, whole)
    weights = torch.randn(B, T)
    expected, = torch.autograd.grad((whole * weights).sum(), logits)
    got, = torch.autograd.grad((chunked * weights).sum(), logits)
    assert torch.equal(got, expected)


def test_backward_keeps_only_the_incoming_logits_not_fp32_copies(logits):
    tokens = torch.randint(0, V, (B, T))
    fp32_copy = B * T * V * 4
    _, whole = saved_bytes(lambda: whole_logprobs(logits, tokens, 0.7, 0.9))
    _, chunked = saved_bytes(lambda: token_logprobs(logits, tokens, temperature=0.7, top_p=0.9, chunk_positions=4))
    assert whole > 2 * fp32_copy  # the plain computation keeps several full-vocabulary fp32 tensors
    assert chunked <= logits.numel() * logits.element_size() + 1024  # views of the bf16 logits, and indices


def test_chunked_entropy_is_that_of_the_sampled_distribution(logits):
    entropy = token_entropy(logits, temperature=0.7, top_p=0.9, chunk_positions=5)
    log_p = torch.log_softmax(sampling_logits(logits.detach(), temperature=0.7, top_p=0.9), -1)
    expected = -(log_p.exp() * log_p).nan_to_num().sum(-1)
    assert not entropy.requires_grad
    assert torch.allclose(entropy, expected, atol=1e-5)
    assert (entropy < token_entropy(logits, temperature=0.7)).all()  # the nucleus is narrower than the whole
