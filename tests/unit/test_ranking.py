"""The K-wise ranking loss and metrics against numbers worked out by hand, and one forward per batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.common.ranking import kendall_tau_b, kwise_ranking_loss, ranking_metrics, scores_by_prompt


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_kwise_loss_is_the_mean_over_prompts_of_the_mean_pair_loss_ties_excluded():
    # prompt 0: K = 4 with answers 2 and 3 tied -> pairs (0,1) (0,2) (0,3) (1,2) (1,3); (2,3) is not a pair
    # prompt 1: K = 2 (pairwise data), padded with two empty slots
    scores = torch.tensor([[2.0, 0.5, -1.0, 0.25], [0.3, 1.2, 0.0, 0.0]])
    ranks = torch.tensor([[1, 2, 3, 3], [1, 2, 0, 0]])
    s = scores.tolist()
    first = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3)]
    loss0 = sum(-log_sigmoid(s[0][i] - s[0][j]) for i, j in first) / len(first)
    loss1 = -log_sigmoid(0.3 - 1.2)
    expected = (loss0 + loss1) / 2  # each prompt weighs the same, whatever its number of pairs
    assert kwise_ranking_loss(scores, ranks).item() == pytest.approx(expected, rel=1e-6)

    margin = 0.5
    loss0 = sum(-log_sigmoid(s[0][i] - s[0][j] - margin) for i, j in first) / len(first)
    loss1 = -log_sigmoid(0.3 - 1.2 - margin)
    assert kwise_ranking_loss(scores, ranks, margin).item() == pytest.approx((loss0 + loss1) / 2, rel=1e-6)


def test_kwise_loss_ignores_answer_order_and_rank_offsets():
    scores = torch.tensor([[0.1, 0.9, -0.4]])
    ranks = torch.tensor([[2, 1, 3]])
    perm = [2, 0, 1]
    a = kwise_ranking_loss(scores, ranks)
    b = kwise_ranking_loss(scores[:, perm], ranks[:, perm])
    c = kwise_ranking_loss(scores, ranks + 5)
    assert a.item() == pytest.approx(b.item()) == pytest.approx(c.item())
    pairs = [(1, 0), (1, 2), (0, 2)]  # better first
    s = scores[0].tolist()
    assert a.item() == pytest.approx(sum(-log_sigmoid(s[i] - s[j]) for i, j in pairs) / 3, rel=1e-6)


def test_kwise_loss_gradient_pushes_better_answers_up():
    scores = torch.zeros(1, 3, requires_grad=True)
    kwise_ranking_loss(scores, torch.tensor([[1, 2, 3]])).backward()
    grad = scores.grad[0]
    assert grad[0] < 0 < grad[2] and grad[1] == pytest.approx(0.0, abs=1e-7)  # the middle one is pushed both ways


def test_scores_by_prompt_fills_slots_in_order():
    ranks = torch.tensor([[1, 2, 0], [3, 1, 2]])
    out = scores_by_prompt(torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0]), ranks)
    assert out.tolist() == [[10.0, 20.0, 0.0], [30.0, 40.0, 50.0]]


def test_ranking_metrics_by_hand():
    # prompt 0 (K = 3, all ordered right): pairs (0,1) +1, (0,2) +2, (1,2) +1
    # prompt 1 (K = 3, one tie; answer 2 scored above answer 1): pairs (0,1) +1, (0,2) -1... see below
    # prompt 2 (K = 2, wrong): pair (0,1) -0.5; the -100 / 0 slots are padding
    scores = np.array([[3.0, 2.0, 1.0], [1.0, 0.0, 2.0], [0.0, 0.5, -100.0]])
    ranks = np.array([[1, 2, 3], [1, 2, 2], [1, 2, -100]])
    # prompt 1 pairs: (0 better than 1) diff +1 right, (0 better than 2) diff -1 wrong; 1 and 2 tied
    m = ranking_metrics(scores, ranks)
    assert m["pairwise_accuracy"] == pytest.approx(4 / 6)
    assert m["margin"] == pytest.approx((1 + 2 + 1 + 1 - 1 - 0.5) / 6)
    assert m["ranking_accuracy"] == pytest.approx(1 / 2)  # over prompts with K > 2 only
    # tau-b of prompt 1: scores (1, 0, 2) vs preference (-1, -2, -2): pairs (0,1) concordant, (0,2) discordant,
    # (1,2) tied in the ranking -> (1 - 1) / sqrt(3 * 2) = 0; prompt 0: tau 1
    assert m["kendall_tau"] == pytest.approx(0.5)


def test_kendall_tau_b_matches_the_definition():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert kendall_tau_b(x, x) == pytest.approx(1.0)
    assert kendall_tau_b(x, -x) == pytest.approx(-1.0)
    y = np.array([1.0, 3.0, 2.0, 4.0])  # one swapped pair of six: (5 - 1) / 6
    assert kendall_tau_b(x, y) == pytest.approx(4 / 6)
    assert math.isnan(kendall_tau_b(x, np.ones(4)))


def test_the_k_answers_of_each_prompt_are_scored_in_one_forward():
    from transformers import LlamaConfig, LlamaForSequenceClassification, TrainingArguments

    from stages.reward.stage import RankingCollator, RankingTrainer

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_labels=1, pad_token_id=0))
    calls: list[int] = []
    model.model.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    examples = [{"input_ids": [[5, 6, 7], [5, 8], [5, 9, 9, 9]], "ranks": [1, 2, 2]},
                {"input_ids": [[4, 3], [4, 2, 2]], "ranks": [2, 1]}]
    batch = RankingCollator(pad_token_id=0)(examples)
    assert batch["input_ids"].shape == (5, 4) and batch["ranks"].tolist() == [[1, 2, 2], [2, 1, 0]]

    trainer = RankingTrainer(model=model, args=TrainingArguments(output_dir="/tmp/unused", report_to=[]), margin=0.0)
    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    assert len(calls) == 1  # all five answers of both prompts in one forward

    # the same loss from scoring each answer alone
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([seq])).logits.item() for ex in examples for seq in ex["input_ids"]]
    assert outputs["scores"][0].tolist() == pytest.approx(alone[:3], abs=1e-5)
    assert outputs["scores"][1, :2].tolist() == pytest.approx(alone[3:], abs=1e-5)
    expected = ((-log_sigmoid(alone[0] - alone[1]) - log_sigmoid(alone[0] - alone[2])) / 2
                - log_sigmoid(alone[4] - alone[3])) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)
