"""A memory bank: one slowly updated, L2-normalised embedding per training sample (NPID, PIRL).

Row y holds the running representation of sample y (its global dataset index, the batch's
``data_idx``). Every rank keeps the whole bank and applies the same updates (from the embeddings
of all ranks), so the copies stay identical without ever being synchronised::

    bank = MemoryBank(num_items=N, embedding_dim=128, momentum=0.5, seed=0)
    negatives = bank.sample_negatives(ids, 4096, seed_parts=(seed, iteration, 0))   # (B, K)
    ...loss...
    bank.update(embeddings, ids)   # m_y <- normalize(momentum * m_y + (1 - momentum) * z)

Negatives are drawn uniformly over the N rows, from a generator seeded per sample by
(``seed_parts``, sample id): the draw does not depend on how the batch is split over processes,
so 2 processes reproduce 1 process, and a resumed run draws what the uninterrupted run drew.

Papers:
    - [0] NPID, Wu et al. 2018, https://arxiv.org/abs/1805.01978 (memory bank, momentum 0.5)
    - [1] PIRL, Misra & van der Maaten 2020, https://arxiv.org/abs/1912.01991
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sslcore.data.seeding import derive_seed
from sslcore.engine.distributed import gather_no_grad


class MemoryBank(nn.Module):
    """N x D memory of per-sample embeddings, updated by momentum and re-normalised.

    Papers: [0] https://arxiv.org/abs/1805.01978, [1] https://arxiv.org/abs/1912.01991

    Rows start uniform in [-1/sqrt(D/3), 1/sqrt(D/3)] (then L2-normalised with ``norm_init``),
    drawn from ``seed``, so every rank starts from the same bank.

    Args:
        num_items: N, rows (training samples), >= 1.
        embedding_dim: D, >= 1.
        momentum: m in [0, 1]; the weight of the old row in an update.
        norm_init: L2-normalise the initial rows.
        seed: seed of the initial rows.

    Raises:
        ValueError: N or D < 1, or momentum outside [0, 1].

    Example:
        >>> bank = MemoryBank(num_items=100, embedding_dim=16, momentum=0.5, seed=0)
        >>> bank.update(torch.randn(4, 16), torch.tensor([3, 7, 8, 9]))
        >>> bank.memory[3].norm()
        tensor(1.0000)
    """

    def __init__(self, num_items: int, embedding_dim: int, *, momentum: float = 0.5,
                 norm_init: bool = True, seed: int = 0) -> None:
        super().__init__()
        if num_items < 1 or embedding_dim < 1:
            raise ValueError(f"memory bank needs num_items >= 1 and embedding_dim >= 1, got "
                             f"{num_items} and {embedding_dim}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"memory momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        bound = 1.0 / math.sqrt(embedding_dim / 3.0)
        generator = torch.Generator().manual_seed(int(seed))
        memory = (torch.rand(num_items, embedding_dim, generator=generator) * 2 - 1) * bound
        if norm_init:
            memory = F.normalize(memory, p=2, dim=1)
        self.register_buffer("memory", memory)

    @property
    def num_items(self) -> int:
        """N, the number of rows."""
        return self.memory.shape[0]

    def extra_repr(self) -> str:
        n, d = self.memory.shape
        return f"num_items={n}, embedding_dim={d}, momentum={self.momentum}"

    def sample_negatives(self, ids: torch.Tensor, num_negatives: int, *,
                         seed_parts: Sequence[int]) -> torch.Tensor:
        """Draw K rows uniformly (with replacement) for each sample.

        Args:
            ids: (B,) int64 sample ids; each sample's draw is seeded by (seed_parts, id).
            num_negatives: K >= 1.
            seed_parts: integers that make the draw unique, e.g. (SEED_VALUE, iteration, output).

        Returns:
            (B, K) int64 on the memory's device. The positive itself may be drawn (as in NPID).

        Raises:
            ValueError: if ``num_negatives`` < 1.
        """
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        generator = torch.Generator()
        rows = []
        for sample_id in ids.tolist():
            generator.manual_seed(derive_seed(*seed_parts, sample_id))
            rows.append(torch.randint(self.num_items, (num_negatives,), generator=generator))
        out = torch.stack(rows) if rows else torch.zeros((0, num_negatives), dtype=torch.long)
        return out.to(self.memory.device, non_blocking=True)

    @torch.no_grad()
    def update(self, embedding: torch.Tensor, ids: torch.Tensor, *, gather: bool = True) -> None:
        """``m_y <- normalize(momentum * m_y + (1 - momentum) * z)`` for every sample of every rank.

        Args:
            embedding: (B, D) embeddings of this rank (normalised or not, as the loss scored them).
            ids: (B,) int64 sample ids.
            gather: collect every rank's (embedding, ids) first, so all banks stay identical.

        Raises:
            ValueError: shapes that do not fit the bank, or ids outside [0, N).
        """
        if embedding.ndim != 2 or embedding.shape[1] != self.memory.shape[1] or len(embedding) != len(ids):
            raise ValueError(f"memory bank update: embeddings {tuple(embedding.shape)} and ids "
                             f"{tuple(ids.shape)} do not fit a {tuple(self.memory.shape)} bank")
        if gather:
            embedding, ids = gather_no_grad(embedding.detach()), gather_no_grad(ids)
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= self.num_items):
            raise ValueError(f"memory bank update: ids span [{int(ids.min())}, {int(ids.max())}], "
                             f"the bank has {self.num_items} rows")
        ids = ids.to(self.memory.device)
        mixed = self.momentum * self.memory[ids] + (1.0 - self.momentum) * embedding.to(self.memory)
        self.memory.index_copy_(0, ids, F.normalize(mixed, p=2, dim=1))
