"""build_dataloader end to end: worker- and process-layout independence, corrupt files, config."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from data_helpers import SIMCLR_TRANSFORMS, make_cfg, needs_fashion_mnist
from torch.utils.data import DistributedSampler

from sslcore.data.dataset import build_dataset
from sslcore.data.loader import build_dataloader, set_loader_epoch
from sslcore.data.sampler import StatefulDistributedSampler

pytestmark = needs_fashion_mnist


def _cfg(root, *, workers=0, batch=16, limit=-1, **extra):
    return make_cfg({
        "DATA.NUM_DATALOADER_WORKERS": workers,
        "DATA.TRAIN.DATA_SOURCES": ["disk_filelist"],
        "DATA.TRAIN.DATA_PATHS": [str(root / "train_images.npy")],
        "DATA.TRAIN.LABEL_SOURCES": ["disk_filelist"],
        "DATA.TRAIN.LABEL_PATHS": [str(root / "train_labels.npy")],
        "DATA.TRAIN.TRANSFORMS": SIMCLR_TRANSFORMS,
        "DATA.TRAIN.COLLATE_FUNCTION": "simclr_collator",
        "DATA.TRAIN.BATCHSIZE_PER_REPLICA": batch,
        "DATA.TRAIN.DATA_LIMIT": limit,
        **extra,
    })


def _epoch(cfg, epoch, *, world_size=1, rank=0, max_batches=None):
    dataset = build_dataset(cfg, "TRAIN", seed=11)
    loader = build_dataloader(cfg, "TRAIN", dataset, world_size=world_size, rank=rank, epoch_seed=11,
                              shuffle=True)
    set_loader_epoch(loader, epoch)
    return [b for _, b in zip(range(max_batches or 10**9), loader)]


def test_batch_format_and_settings(small_fmnist):
    cfg = _cfg(small_fmnist, limit=40, **{"DATA.TRAIN.DROP_LAST": True})
    dataset = build_dataset(cfg, "TRAIN", seed=0)
    loader = build_dataloader(cfg, "TRAIN", dataset, world_size=1, rank=0, epoch_seed=0, shuffle=True)
    assert isinstance(loader.sampler, StatefulDistributedSampler) and len(loader) == 2
    assert loader.pin_memory is torch.cuda.is_available() and loader.num_workers == 0
    batch = next(iter(loader))
    assert set(batch) == {"data", "label", "data_idx", "num_skipped"}
    assert batch["data"][0].shape == (32, 3, 28, 28) and batch["data"][0].dtype == torch.float32
    assert batch["label"].shape == batch["data_idx"].shape == (32,)
    assert torch.equal(batch["data_idx"][:16], batch["data_idx"][16:])
    labels = dataset.labels()
    assert batch["label"].tolist() == [int(labels[i]) for i in batch["data_idx"].tolist()]
    torch_cfg = _cfg(small_fmnist, **{"DATA.TRAIN.USE_STATEFUL_DISTRIBUTED_SAMPLER": False})
    plain = build_dataloader(torch_cfg, "TRAIN", dataset, world_size=2, rank=1, epoch_seed=0, shuffle=False)
    assert isinstance(plain.sampler, DistributedSampler)
    with pytest.raises(ValueError, match="BATCHSIZE_PER_REPLICA must be >= 1"):
        build_dataloader(_cfg(small_fmnist, batch=0), "TRAIN", dataset, world_size=1, rank=0, shuffle=True)


def test_workers_do_not_change_the_batches(small_fmnist):
    """Persistent workers see set_epoch, and per-sample seeding makes views layout-independent."""
    cfg0, cfg2 = _cfg(small_fmnist, limit=64), _cfg(small_fmnist, workers=2, limit=64)
    dataset = build_dataset(cfg2, "TRAIN", seed=11)
    loader = build_dataloader(cfg2, "TRAIN", dataset, world_size=1, rank=0, epoch_seed=11, shuffle=True)
    for epoch in (0, 1):
        set_loader_epoch(loader, epoch)
        with_workers = list(loader)
        reference = _epoch(cfg0, epoch)
        assert len(with_workers) == len(reference) == 4
        for a, b in zip(with_workers, reference):
            assert torch.equal(a["data_idx"], b["data_idx"])
            torch.testing.assert_close(a["data"][0], b["data"][0], rtol=0, atol=0)
        if epoch == 0:
            first = reference
    assert not torch.equal(first[0]["data_idx"], reference[0]["data_idx"])


def test_two_processes_see_the_one_process_batch(small_fmnist):
    one = _epoch(_cfg(small_fmnist, batch=16), 2, max_batches=2)
    two = [_epoch(_cfg(small_fmnist, batch=8), 2, world_size=2, rank=r, max_batches=2) for r in range(2)]
    for step in range(2):
        rows = {}
        for part in (two[0][step], two[1][step]):
            for row, idx in enumerate(part["data_idx"].tolist()):
                rows.setdefault(idx, []).append(part["data"][0][row])
        expected = one[step]
        assert set(rows) == set(expected["data_idx"].tolist())
        for row, idx in enumerate(expected["data_idx"].tolist()):
            view = row // 16
            torch.testing.assert_close(rows[idx][view], expected["data"][0][row], rtol=0, atol=0)


def test_corrupt_image_through_workers_is_counted_not_fatal(small_fmnist, tmp_path):
    root = tmp_path / "corrupt"
    shutil.copytree(small_fmnist, root)
    paths = np.load(root / "train_images.npy")
    (root / paths[3]).write_bytes(b"garbage" * 10)
    cfg = _cfg(root, workers=2, batch=16, limit=-1)
    dataset = build_dataset(cfg, "TRAIN", seed=0)
    loader = build_dataloader(cfg, "TRAIN", dataset, world_size=1, rank=0, epoch_seed=0, shuffle=True)
    set_loader_epoch(loader, 0)
    batches = list(loader)
    assert sum(b["num_skipped"] for b in batches) == 1
    seen = torch.cat([b["data_idx"] for b in batches]).tolist()
    assert 3 not in seen and len(seen) == 2 * (len(paths) - 1)
