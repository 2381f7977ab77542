"""PPO-ptx batches: one seeded order of blocks dealt out over the processes, `batch_size` blocks per optimizer
step (not per micro-batch), split over the step's micro-batches, resumable from its position."""

from __future__ import annotations

import torch

from stages.ppo.ptx import PtxBatches
from stages.pretrain.stage import train_tokenizer
from tests.helpers import small_corpus


def batches(corpus, tokenizer, rank: int, *, world: int, batch_size: int = 4) -> PtxBatches:
    return PtxBatches([str(corpus)], tokenizer, block_size=32, batch_size=batch_size, seed=3, rank=rank,
                      world_size=world, device="cpu")


def rows(tensors) -> set[tuple[int, ...]]:
    return {tuple(row.tolist()) for t in tensors if t is not None for row in t}


def test_processes_share_one_order_and_never_train_on_the_same_block(tmp_path):
    corpus = small_corpus(tmp_path, paragraphs=80)
    tokenizer = train_tokenizer(corpus.read_text().split("\n\n"), 512, 2)
    alone = batches(corpus, tokenizer, rank=0, world=1)
    ranks = [batches(corpus, tokenizer, rank=r, world=2) for r in (0, 1)]
    for _ in range(3):
        whole = rows(alone.next_step(parts=1))
        shares = [rows(b.next_step(parts=2)) for b in ranks]
        assert len(whole) == 4 and all(len(share) == 2 for share in shares)
        assert not shares[0] & shares[1] and shares[0] | shares[1] == whole


def test_a_step_is_split_over_its_micro_batches_and_resumes_where_it_was(tmp_path):
    corpus = small_corpus(tmp_path, paragraphs=80)
    tokenizer = train_tokenizer(corpus.read_text().split("\n\n"), 512, 2)
    ptx = batches(corpus, tokenizer, rank=0, world=1, batch_size=3)
    parts = ptx.next_step(parts=4)  # 3 blocks over 4 micro-batches: one is left without
    assert [None if p is None else p.shape for p in parts] == [torch.Size([1, 32])] * 3 + [None]
    saved = ptx.state_dict()
    expected = ptx.next_step(parts=1)[0]
    resumed = batches(corpus, tokenizer, rank=0, world=1, batch_size=3)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed.next_step(parts=1)[0], expected)


def test_an_odd_batch_gives_every_process_an_equal_share(tmp_path):
    # unequal shares make one ZeRO-3 rank run a forward the other never joins (issue 23.7): 3 blocks over 2
    # processes become 2 each, still disjoint
    corpus = small_corpus(tmp_path, paragraphs=80)
    tokenizer = train_tokenizer(corpus.read_text().split("\n\n"), 512, 2)
    ranks = [batches(corpus, tokenizer, rank=r, world=2, batch_size=3) for r in (0, 1)]
    for _ in range(3):
        steps = [b.next_step(parts=2) for b in ranks]
        assert [[p is None for p in step] for step in steps] == [[False, False]] * 2  # the same forwards
        shares = [rows(step) for step in steps]
        assert len(shares[0]) == len(shares[1]) == 2 and not shares[0] & shares[1]
