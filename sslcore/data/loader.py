"""Build a split's DataLoader from the config: sampler, collator, workers, pinned memory.

Per epoch, call :func:`set_loader_epoch` (it moves both the sampler's permutation and the
dataset's augmentation seed) before iterating.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from sslcore.config.schema import Key, declare
from sslcore.data.collators import build_collator
from sslcore.data.dataset import split_config
from sslcore.data.sampler import StatefulDistributedSampler

for _split in ("TRAIN", "TEST"):
    declare(f"DATA.{_split}", {
        "BATCHSIZE_PER_REPLICA": Key(256, int, "samples per process per step; the global batch is "
                                     "this x world size"),
        "DROP_LAST": Key(False, bool, "drop the last incomplete global batch of each epoch"),
        "USE_STATEFUL_DISTRIBUTED_SAMPLER": Key(
            True, bool, "True: sslcore's StatefulDistributedSampler (global batches independent of the "
            "process count, mid-epoch resume); False: torch's DistributedSampler. VISSL's default is False"),
    })
declare("DATA", {
    "NUM_DATALOADER_WORKERS": Key(4, int, "DataLoader worker processes per training process; 0 loads "
                                  "in the main process. Workers persist across epochs"),
    "PIN_MEMORY": Key(True, bool, "page-locked batches for faster host-to-GPU copies; ignored without CUDA"),
})


def build_sampler(dataset_len: int, *, drop_last: bool, world_size: int, rank: int, batch_size: int,
                  seed: int, shuffle: bool, stateful: bool, dataset: Any = None) -> Sampler:
    """The sampler the config asks for.

    Args:
        dataset_len: N.
        drop_last, world_size, rank, batch_size, seed, shuffle: see
            :class:`~sslcore.data.sampler.StatefulDistributedSampler`.
        stateful: USE_STATEFUL_DISTRIBUTED_SAMPLER.
        dataset: the dataset (torch's DistributedSampler needs it).

    Returns:
        A sampler with ``set_epoch``.
    """
    if stateful:
        return StatefulDistributedSampler(dataset_len, world_size=world_size, rank=rank,
                                          batch_size=batch_size, seed=seed, shuffle=shuffle,
                                          drop_last=drop_last)
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                              drop_last=drop_last)


def build_dataloader(cfg: Any, split: str, dataset: torch.utils.data.Dataset, *, world_size: int, rank: int,
                     shuffle: bool, epoch_seed: Optional[int] = None) -> DataLoader:
    """A DataLoader for ``cfg.DATA[split]``.

    Uses BATCHSIZE_PER_REPLICA, DROP_LAST, USE_STATEFUL_DISTRIBUTED_SAMPLER, COLLATE_FUNCTION(_PARAMS)
    of the split and DATA.NUM_DATALOADER_WORKERS, DATA.PIN_MEMORY (only when CUDA is available).
    Workers are persistent when there are any.

    Args:
        cfg: the whole config (DictConfig or nested dict).
        split: ``"TRAIN"`` or ``"TEST"``.
        dataset: usually from :func:`sslcore.data.dataset.build_dataset`.
        world_size: number of data-parallel processes.
        rank: this process's rank.
        shuffle: shuffle each epoch (True for training, False for feature extraction).
        epoch_seed: seed of the sampler's per-epoch permutations; default ``cfg.SEED_VALUE``
            when the config has it, else 0.

    Returns:
        The DataLoader; batches follow :mod:`sslcore.data.collators`' format.

    Raises:
        ValueError: non-positive batch size, negative workers, bad collator parameters.
        KeyError: unknown collator name.

    Example:
        >>> loader = build_dataloader(cfg, "TRAIN", dataset, world_size=1, rank=0, epoch_seed=0, shuffle=True)
        >>> set_loader_epoch(loader, 0); batch = next(iter(loader))
    """
    split_cfg = split_config(cfg, split)
    if epoch_seed is None:
        epoch_seed = int(cfg.get("SEED_VALUE", 0) or 0)
    batch_size, workers = split_cfg["BATCHSIZE_PER_REPLICA"], int(cfg["DATA"]["NUM_DATALOADER_WORKERS"])
    if batch_size < 1:
        raise ValueError(f"DATA.{split}.BATCHSIZE_PER_REPLICA must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"DATA.NUM_DATALOADER_WORKERS must be >= 0, got {workers}")
    sampler = build_sampler(len(dataset), drop_last=split_cfg["DROP_LAST"], world_size=world_size, rank=rank,
                            batch_size=batch_size, seed=epoch_seed, shuffle=shuffle,
                            stateful=split_cfg["USE_STATEFUL_DISTRIBUTED_SAMPLER"], dataset=dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=build_collator(split_cfg["COLLATE_FUNCTION"], split_cfg["COLLATE_FUNCTION_PARAMS"]),
        pin_memory=bool(cfg["DATA"]["PIN_MEMORY"]) and torch.cuda.is_available(),
        drop_last=split_cfg["DROP_LAST"],
        persistent_workers=workers > 0,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Start epoch ``epoch``: new sampler permutation and new augmentation seeds.

    Call before ``iter(loader)``; persistent workers see the new epoch through shared memory.
    """
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
