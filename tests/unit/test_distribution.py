"""PPO's per-token log-probs and entropies, computed in chunks: the same numbers and gradients as the whole
computation, without keeping full-vocabulary fp32 copies for backward; the top-p nucleus without a sort, the
same as transformers' TopPLogitsWarper keeps."""

from __future__ import annotations

import pytest
import torch
from transformers import TopPLogitsWarper

from stages.common.distribution import (
    sampling_logits,
    token_entropy,
    token_logprobs,
    token_logprobs_and_entropy,
)
from stages.common.nucleus import nucleus_floor

B, T, V = 2, 13, 300


@pytest.fixture
def logits():
    torch.manual_seed(0)
    return (3 * torch.randn(B, T, V)).to(torch.bfloat16).requires_grad_()


def sorted_nucleus(scaled, top_p):
    """[..., V] which tokens are in the nucleus, by a full sort: the fewest most probable tokens whose mass
    reaches top_p, and every token tied with the last of them."""
    ordered, _ = scaled.sort(-1, descending=True)
    mass = torch.softmax(ordered, -1).cumsum(-1)
    kept = (mass[..., :-1] < top_p).sum(-1, keepdim=True) + 1
    return scaled >= ordered.gather(-1, kept - 1)


def whole_logprobs(logits, tokens, temperature, *, top_p):
    """The nucleus of the scaled logits, plus the token itself (whose own logit is kept), all at once."""
    scaled = logits.float() / temperature
    if top_p < 1:
        own = torch.nn.functional.one_hot(tokens, V).bool()
        scaled = torch.where(own | sorted_nucleus(scaled, top_p), scaled, torch.full_like(scaled, -1e9))
    return torch.log_softmax(scaled, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def warper_nucleus(scaled, top_p):
    return TopPLogitsWarper(top_p, filter_value=float("-inf"))(None, scaled.clone()) > float("-inf")


@pytest.mark.parametrize("scale", [8.0, 0.3])  # peaked (a few tokens) and flat (thousands: past the first top-k)
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95, 0.999])
def test_the_nucleus_is_the_one_transformers_top_p_warper_keeps(scale, top_p):
    torch.manual_seed(2)
    scaled = scale * torch.randn(64, 5000)  # fp32: no ties
    floor = nucleus_floor(scaled, top_p=top_p)
    ours = scaled >= floor.unsqueeze(-1)
    assert torch.equal(ours, warper_nucleus(scaled, top_p))
    if scale < 1:
        assert ours.sum(-1).min() > 256  # the widened search was exercised


def test_in_bf16_a_tie_at_the_nucleus_edge_is_kept_whole():
    torch.manual_seed(3)
    scaled = (3 * torch.randn(256, 300)).to(torch.bfloat16).float()  # bf16 values tie often
    floor = nucleus_floor(scaled, top_p=0.9).unsqueeze(-1)
    ours, warper = scaled >= floor, warper_nucleus(scaled, 0.9)
    assert (warper & ~ours).sum() == 0  # nothing the warper keeps is left out
    extra = ours & ~warper
    assert extra.any()  # the case exists in this data
    assert torch.equal(scaled[extra], floor.expand_as(scaled)[extra])  # and each extra token ties with the edge


def saved_bytes(compute) -> tuple[torch.Tensor, int]:
    """What `compute()` returns, and the bytes autograd keeps for its backward."""
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = compute()
    return out, sum(sizes)


@pytest.mark.parametrize("chunk_positions", [4, 13, None])  # spans of a row, one row a block, all in one block
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_chunked_log_probs_and_gradients_equal_the_whole_computation(logits, *, temperature, top_p, chunk_positions):
    tokens = torch.randint(0, V, (B, T))
    whole = whole_logprobs(logits, tokens, temperature, top_p=top_p)
    chunked = token_logprobs(logits, tokens, temperature=temperature, top_p=top_p, chunk_positions=chunk_positions)
    assert chunked.dtype == torch.float32 and chunked.shape == (B, T)
    assert torch.allclose(chunked, whole)
    weights = torch.randn(B, T)
    expected, = torch.autograd.grad((whole * weights).sum(), logits)
    got, = torch.autograd.grad((chunked * weights).sum(), logits)
    assert torch.equal(got, expected)


def test_a_sampled_token_outside_the_rebuilt_nucleus_keeps_a_finite_log_prob():
    # bf16 moves the nucleus boundary between the forward that sampled and the one that scores: the token
    # actually sampled can fall outside the rebuilt nucleus (issue 23.1: its log-prob was -1e9)
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    inside, outside = torch.tensor([[0]]), torch.tensor([[3]])
    nucleus = token_logprobs(logits, inside, top_p=0.7)
    assert torch.allclose(nucleus, torch.log(torch.tensor([[0.5 / 0.8]])))  # renormalised over {0, 1}
    edge = token_logprobs(logits, outside, top_p=0.7)
    assert torch.isfinite(edge).all() and edge.item() > -10
    # its probability is renormalised over the nucleus plus itself: log(0.05 / 0.85)
    assert torch.allclose(edge, torch.log(torch.tensor([[0.05 / 0.85]])))


def test_bf16_rescoring_never_gives_the_sampled_token_minus_1e9():
    # the same logits, sampled from in one precision path and rescored in another, as PPO does
    torch.manual_seed(1)
    exact = 4 * torch.randn(64, 32, 500)
    sampled = torch.multinomial(torch.softmax(sampling_logits(exact, temperature=0.7, top_p=0.95).view(-1, 500), -1), 1)
    tokens = sampled.view(64, 32)
    rescored = token_logprobs(exact.to(torch.bfloat16), tokens, temperature=0.7, top_p=0.95)
    assert rescored.min() > -50


def test_backward_keeps_only_the_incoming_logits_not_fp32_copies(logits):
    tokens = torch.randint(0, V, (B, T))
    fp32_copy = B * T * V * 4
    _, whole = saved_bytes(lambda: whole_logprobs(logits, tokens, 0.7, top_p=0.9))
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


def test_log_probs_and_entropy_together_equal_each_alone(logits):
    tokens = torch.randint(0, V, (B, T))
    logprobs, entropy = token_logprobs_and_entropy(logits, tokens, temperature=0.7, top_p=0.9)
    assert torch.equal(logprobs, token_logprobs(logits, tokens, temperature=0.7, top_p=0.9))
    assert torch.equal(entropy, token_entropy(logits, temperature=0.7, top_p=0.9))
    assert logprobs.requires_grad and not entropy.requires_grad


def test_an_empty_batch_gives_empty_statistics():
    logits = torch.zeros(0, 5, V)
    assert token_logprobs(logits, torch.zeros(0, 5, dtype=torch.long), top_p=0.9).shape == (0, 5)
    assert token_entropy(logits, top_p=0.9).shape == (0, 5)
