"""A distributed sampler whose global batches do not depend on the number of processes, and
which resumes mid-epoch (VISSL's ``USE_STATEFUL_DISTRIBUTED_SAMPLER``).

Each epoch, one permutation of the dataset is drawn from (seed, epoch). Global step s takes the
slice ``perm[s*G : (s+1)*G]`` with G = world_size * batch_size, and rank r takes the r-th
contiguous ``batch_size`` part of that slice. Hence the union over ranks of step s's batches is
the batch that one process with batch size G gets at step s: 2 processes x 8 samples see exactly
the samples of 1 process x 16 samples, step by step.
"""

from __future__ import annotations

import math
from typing import Dict, Iterator

import torch
from torch.utils.data import Sampler

from sslcore.data.seeding import derive_seed


class StatefulDistributedSampler(Sampler[int]):
    """Per-rank sample indices with process-count-independent global batches and resume.

    With ``drop_last`` the last incomplete global batch is dropped. Without it the last global
    batch keeps its R = N mod G samples, padded by repeating its own first samples up to a
    multiple of ``world_size`` and split into equal contiguous parts, so every rank runs the same
    number of steps and the union over ranks is still exactly that batch's samples (some twice).

    Args:
        dataset_len: N, the number of samples.
        world_size: number of processes (data-parallel replicas), >= 1.
        rank: this process's rank in [0, world_size).
        batch_size: samples per rank per step (BATCHSIZE_PER_REPLICA), >= 1.
        seed: seed of the per-epoch permutations (the epoch is mixed in by :meth:`set_epoch`).
        shuffle: False keeps the order 0..N-1 every epoch.
        drop_last: drop the last incomplete global batch.

    Raises:
        ValueError: on a bad rank, size or batch size, or when ``drop_last`` leaves no batch.

    Example:
        >>> s = StatefulDistributedSampler(100, world_size=2, rank=1, batch_size=8, seed=0, drop_last=True)
        >>> s.set_epoch(3); s.set_start_iter(2)   # resume at step 2 of epoch 3
        >>> len(s)  # (6 steps - 2) * 8
        32
    """

    def __init__(self, dataset_len: int, *, world_size: int, rank: int, batch_size: int, seed: int,
                 shuffle: bool = True, drop_last: bool) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need world_size >= 1 and 0 <= rank < world_size, got rank {rank} of {world_size}"
            )
        if batch_size < 1 or dataset_len < 1:
            raise ValueError(
                f"need batch_size >= 1 and a non-empty dataset, got {batch_size} and {dataset_len} samples"
            )
        if drop_last and dataset_len < world_size * batch_size:
            raise ValueError(
                f"{dataset_len} samples do not fill one global batch of {world_size} x {batch_size} with "
                "DROP_LAST=True; lower BATCHSIZE_PER_REPLICA or set DROP_LAST=False"
            )
        self.dataset_len, self.world_size, self.rank = dataset_len, world_size, rank
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, int(seed), shuffle, drop_last
        self.epoch = 0
        self.start_iter = 0

    @property
    def global_batch_size(self) -> int:
        """G = world_size * batch_size."""
        return self.world_size * self.batch_size

    def num_batches(self) -> int:
        """Steps per full epoch (the same on every rank)."""
        full, rest = divmod(self.dataset_len, self.global_batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def global_order(self) -> torch.Tensor:
        """This epoch's order of all N indices, (N,) int64: the same on every rank."""
        if not self.shuffle:
            return torch.arange(self.dataset_len)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        return torch.randperm(self.dataset_len, generator=generator)

    def rank_indices(self) -> torch.Tensor:
        """This rank's indices for the whole epoch, batch after batch (ignores start_iter)."""
        order, size, world = self.global_order(), self.batch_size, self.world_size
        full = self.dataset_len // self.global_batch_size
        mine = order[: full * self.global_batch_size].view(full, world, size)[:, self.rank].reshape(-1)
        tail = order[full * self.global_batch_size:]
        if self.drop_last or len(tail) == 0:
            return mine
        share = math.ceil(len(tail) / world)
        padded = tail.repeat(math.ceil(share * world / len(tail)))[: share * world]
        return torch.cat([mine, padded[self.rank * share:(self.rank + 1) * share]])

    def __iter__(self) -> Iterator[int]:
        """Yield this rank's indices from step ``start_iter`` on."""
        return iter(self.rank_indices()[self.start_iter * self.batch_size:].tolist())

    def __len__(self) -> int:
        """Indices left in this epoch on this rank (after ``start_iter`` steps are skipped)."""
        full = self.dataset_len // self.global_batch_size
        total = full * self.batch_size
        rest = self.dataset_len - full * self.global_batch_size
        if rest and not self.drop_last:
            total += math.ceil(rest / self.world_size)
        return max(0, total - self.start_iter * self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation. Moving to another epoch clears ``start_iter``."""
        if int(epoch) != self.epoch:
            self.start_iter = 0
        self.epoch = int(epoch)

    def set_start_iter(self, start_iter: int) -> None:
        """Skip the first ``start_iter`` steps of the current epoch (resume mid-epoch).

        Call after :meth:`set_epoch` for the resumed epoch (or use :meth:`load_state_dict`).

        Raises:
            ValueError: if ``start_iter`` is outside [0, num_batches()].
        """
        if not 0 <= start_iter <= self.num_batches():
            raise ValueError(
                f"start_iter must be in [0, {self.num_batches()}] for this epoch, got {start_iter}"
            )
        self.start_iter = int(start_iter)

    def state_dict(self) -> Dict[str, int]:
        """``{"epoch", "start_iter", "seed"}`` for a checkpoint."""
        return {"epoch": self.epoch, "start_iter": self.start_iter, "seed": self.seed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Restore from :meth:`state_dict` (epoch first, then start_iter)."""
        self.seed = int(state.get("seed", self.seed))
        self.set_epoch(int(state["epoch"]))
        self.set_start_iter(int(state.get("start_iter", 0)))
