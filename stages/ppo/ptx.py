"""PPO-ptx (InstructGPT): batches of packed pretraining text whose language-modelling loss is mixed into
the policy loss, so PPO does not forget the pretraining distribution."""

from __future__ import annotations

import random

import torch

from core.errors import InputError
from rows.corpus import read_documents


class PtxBatches:
    """Packed `block_size` blocks of a corpus in one seeded order that every process shares: each optimizer step
    takes the next `batch_size` blocks of it, rounded up to a multiple of the process count, dealt out over
    the processes (rank r takes every world-th one), so no two processes train on the same block and every
    process runs as many ptx forwards as the others (under ZeRO-3 each forward is a collective: unequal
    counts hang).

    The position is checkpointed (state_dict), so a resumed run continues with the same blocks.
    """

    def __init__(self, paths: list[str], tokenizer, *, block_size: int, batch_size: int, seed: int, rank: int,
                 world_size: int, device):
        eos = tokenizer.eos_token_id
        stream: list[int] = []
        for path in paths:
            for document in read_documents(path):
                stream += tokenizer(document, add_special_tokens=False, verbose=False)["input_ids"] + [eos]  # cut into blocks below
        usable = len(stream) - len(stream) % block_size
        if usable == 0:
            raise InputError(f"ppo.ptx.data: fewer than block_size ({block_size}) tokens of text")
        self.blocks = torch.tensor(stream[:usable]).view(-1, block_size)
        self.batch_size = batch_size
        self.step_blocks = -(-batch_size // world_size) * world_size  # equal shares on every process
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.device = device
        self.position = 0
        self._order: tuple[int, list[int]] = (-1, [])  # (epoch, its shuffled block order)

    def _indices(self) -> list[int]:
        """This process's share of the next `step_blocks` blocks of the shared order."""
        count = len(self.blocks)
        out = []
        for k in range(self.position + self.rank, self.position + self.step_blocks, self.world_size):
            epoch, offset = divmod(k, count)
            if self._order[0] != epoch:
                order = list(range(count))
                random.Random(self.seed + epoch).shuffle(order)
                self._order = (epoch, order)
            out.append(self._order[1][offset])
        self.position += self.step_blocks
        return out

    def next_step(self, parts: int) -> list[torch.Tensor | None]:
        """This process's blocks of the next optimizer step, split into `parts` micro-batches ([n, block_size]
        token ids each; None for a micro-batch left without one)."""
        blocks = self._indices()
        return [self.blocks[blocks[j::parts]].to(self.device) if blocks[j::parts] else None for j in range(parts)]

    def state_dict(self) -> dict:
        """The JSON a checkpoint keeps of it (stages.ppo.stage.save_checkpoint)."""
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's position."""
        self.position = state["position"]
