"""PPO's one batch arithmetic (stages/ppo/config.py): the config check and the stage use the same function."""

from __future__ import annotations

import pytest

from core.errors import InputError
from stages.ppo.config import PpoBatches, batch_problems, ppo_batches


def test_a_rollout_splits_into_per_process_mini_and_micro_batches():
    assert ppo_batches(rollout=16, mini=8, micro=2, epochs=4, world=2) == PpoBatches(
        prompts=8, mini=4, micro=2, accumulation=2, updates=4 * 2)
    # no micro-batch: the whole per-process mini-batch in one forward
    assert ppo_batches(rollout=16, mini=8, micro=None, epochs=1, world=2) == PpoBatches(
        prompts=8, mini=4, micro=4, accumulation=1, updates=2)
    # a micro-batch larger than a process's share of the mini-batch is that share
    assert ppo_batches(rollout=8, mini=8, micro=8, epochs=2, world=4).micro == 2


@pytest.mark.parametrize("sizes, key, message", [
    (dict(rollout=16, mini=6, micro=None, world=1), ("ppo", "mini_batch_size"), "must divide ppo.rollout_batch_size (16)"),
    (dict(rollout=16, mini=8, micro=3, world=1), ("ppo", "micro_batch_size"), "must divide ppo.mini_batch_size (8)"),
    (dict(rollout=12, mini=6, micro=None, world=4), ("ppo",),
     "rollout_batch_size (12) and mini_batch_size (6) must be multiples of the process count (4)"),
    (dict(rollout=24, mini=12, micro=4, world=2), ("ppo", "micro_batch_size"),
     "must divide the mini-batch per process (6 = ppo.mini_batch_size / 2 processes)"),
])
def test_sizes_that_do_not_divide_are_named_by_key(sizes, key, message):
    assert batch_problems(**sizes) == [(key, message)]
    with pytest.raises(InputError) as info:
        ppo_batches(epochs=1, **sizes)
    assert info.value.problems == [f"{'.'.join(key)}: {message}"]
