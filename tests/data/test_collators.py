"""Collators: batch format, SimCLR's view-major order, multi-crop groups, invalid samples."""

from __future__ import annotations

import pytest
import torch

from sslcore.data.collators import COLLATORS, build_collator


def _sample(i: int, views: int = 2, sizes=(4,), valid: bool = True):
    """Sample i: view v is a (1, s, s) tensor filled with 10*i + v; label 100 + i."""
    side = [sizes[v % len(sizes)] for v in range(views)]
    data = [torch.full((1, side[v], side[v]), float(10 * i + v)) for v in range(views)]
    return {"data": data, "label": [100 + i] * views, "data_idx": [i] * views, "data_valid": [valid] * views}


def test_registry_holds_the_collators():
    assert {"default_collate", "simclr_collator", "multicrop_collator"} <= set(COLLATORS.names())


def test_simclr_collator_is_view_major():
    batch = build_collator("simclr_collator", {})([_sample(i, views=3) for i in range(4)])
    (data,) = batch["data"]
    assert data.shape == (12, 1, 4, 4)
    # row r = view r // B of sample r % B
    assert data[:, 0, 0, 0].tolist() == [10 * (r % 4) + r // 4 for r in range(12)]
    assert batch["label"].tolist() == [100 + r % 4 for r in range(12)]
    assert batch["data_idx"].tolist() == [r % 4 for r in range(12)]
    assert batch["label"].dtype == batch["data_idx"].dtype == torch.int64 and batch["num_skipped"] == 0
    # positives at offset B: rows i and i + B come from the same sample
    assert torch.equal(batch["data_idx"][:4], batch["data_idx"][4:8])


def test_default_collate_stacks_each_view_position():
    batch = build_collator("default_collate", None)([_sample(i, views=2) for i in range(3)])
    assert [d.shape for d in batch["data"]] == [(3, 1, 4, 4)] * 2
    assert batch["data"][1][:, 0, 0, 0].tolist() == [1.0, 11.0, 21.0]
    assert batch["label"].tolist() == [100, 101, 102] and batch["data_idx"].tolist() == [0, 1, 2]


def test_multicrop_collator_groups_by_resolution():
    samples = [_sample(i, views=4, sizes=(8, 8, 4, 4)) for i in range(3)]
    batch = build_collator("multicrop_collator", {})(samples)
    assert [tuple(d.shape) for d in batch["data"]] == [(6, 1, 8, 8), (6, 1, 4, 4)]
    assert batch["data"][1][:, 0, 0, 0].tolist() == [2.0, 12.0, 22.0, 3.0, 13.0, 23.0]
    assert batch["data_idx"].tolist() == [0, 1, 2] * 4


def test_invalid_samples_are_dropped_and_counted():
    samples = [_sample(0), _sample(1, valid=False), _sample(2), _sample(3, valid=False)]
    batch = build_collator("simclr_collator", {})(samples)
    assert batch["num_skipped"] == 2 and batch["data_idx"].tolist() == [0, 2, 0, 2]
    assert batch["data"][0][:, 0, 0, 0].tolist() == [0.0, 20.0, 1.0, 21.0]
    empty = build_collator("default_collate", {})([_sample(5, valid=False)])
    assert empty["num_skipped"] == 1 and empty["label"].numel() == 0
    assert empty["data"][0].shape == (0, 1, 4, 4)


def test_collator_errors():
    with pytest.raises(KeyError, match="Did you mean: simclr_collator"):
        build_collator("simclr_colator", {})
    with pytest.raises(ValueError, match="bad COLLATE_FUNCTION_PARAMS"):
        build_collator("simclr_collator", {"num_views": 2})
    pil_like = {"data": ["not a tensor"], "label": [0], "data_idx": [0], "data_valid": [True]}
    with pytest.raises(TypeError, match="ToTensor"):
        build_collator("default_collate", {})([pil_like])
    with pytest.raises(ValueError, match="multicrop_collator"):
        build_collator("simclr_collator", {})([_sample(0, views=2, sizes=(8, 4))])
