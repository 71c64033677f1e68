"""Seeded per-class subsets (k per class, fraction per class) and their disk_filelist output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sslcore.cli import main
from sslcore.data.sources import DiskFilelistSource
from sslcore.data.subsets import sample_fraction_per_class, sample_per_class, write_subset

SIZES = [50, 120, 7, 300]  # class c has SIZES[c] samples


@pytest.fixture()
def labels() -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.permutation(np.repeat(np.arange(len(SIZES)), SIZES)).astype(np.int64)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_k_per_class(labels, k):
    idx = sample_per_class(labels, k, seed=0)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)  # sorted, distinct
    assert np.bincount(labels[idx], minlength=len(SIZES)).tolist() == [k] * len(SIZES)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_fraction_per_class(labels, fraction):
    idx = sample_fraction_per_class(labels, fraction, seed=1)
    expected = [max(1, int(round(fraction * n))) for n in SIZES]
    assert np.bincount(labels[idx], minlength=len(SIZES)).tolist() == expected
    assert np.all(np.diff(idx) > 0)


def test_seeds_determine_the_draw(labels):
    assert np.array_equal(sample_per_class(labels, 5, seed=3), sample_per_class(labels, 5, seed=3))
    assert not np.array_equal(sample_per_class(labels, 5, seed=3), sample_per_class(labels, 5, seed=4))
    a, b = sample_fraction_per_class(labels, 0.1, seed=3), sample_fraction_per_class(labels, 0.1, seed=4)
    assert len(a) == len(b) and not np.array_equal(a, b)


def test_multi_hot_takes_k_positives_per_class():
    rng = np.random.default_rng(0)
    multi_hot = rng.choice([-1, 0, 1], size=(400, 6), p=[0.6, 0.1, 0.3]).astype(np.int8)
    idx = sample_per_class(multi_hot, 4, seed=2)
    positives = (multi_hot[idx] == 1).sum(axis=0)
    assert np.all(positives >= 4)  # every class has its 4 drawn positives (others may add more)
    assert len(idx) <= 4 * 6 and len(np.unique(idx)) == len(idx)
    frac = sample_fraction_per_class(multi_hot, 0.1, seed=2)
    expected = np.maximum(1, np.round(0.1 * (multi_hot == 1).sum(axis=0)))
    assert np.all((multi_hot[frac] == 1).sum(axis=0) >= expected)


def test_errors_name_the_argument_and_class(labels):
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction must be in"):
            sample_fraction_per_class(labels, bad, seed=0)
    with pytest.raises(ValueError, match="class 2 has 7 sample"):
        sample_per_class(labels, 8, seed=0)
    with pytest.raises(ValueError, match="k .* must be >= 1"):
        sample_per_class(labels, 0, seed=0)
    with pytest.raises(ValueError, match="integers"):
        sample_per_class(labels.astype(float), 1, seed=0)


def _filelist(root: Path, labels: np.ndarray) -> None:
    (root / "img").mkdir(parents=True)
    for split, lab in (("train", labels), ("test", labels[:20])):
        np.save(root / f"{split}_images.npy", np.array([f"img/{split}{i}.png" for i in range(len(lab))]))
        np.save(root / f"{split}_labels.npy", lab)


def test_write_subset_and_cli(tmp_path, labels):
    data = tmp_path / "data"
    _filelist(data, labels)
    idx = sample_fraction_per_class(labels, 0.1, seed=7)
    record = json.loads(write_subset(data, "train", idx, tmp_path / "sub", seed=7,
                                     description={"fraction": 0.1}).read_text())
    paths = np.load(tmp_path / "sub" / "train_images.npy")
    assert np.array_equal(np.load(tmp_path / "sub" / "train_labels.npy"), labels[idx])
    assert paths.tolist() == [str(data.resolve() / f"img/train{i}.png") for i in idx]
    assert DiskFilelistSource(tmp_path / "sub" / "train_images.npy").describe(0) == paths[0]
    assert np.array_equal(np.load(tmp_path / "sub" / "test_labels.npy"), labels[:20])
    assert record["indices"] == idx.tolist() and record["seed"] == 7
    assert record["description"] == {"fraction": 0.1} and len(record["source_sha256"]) == 64
    assert record["per_class_counts"] == {str(c): max(1, round(0.1 * n)) for c, n in enumerate(SIZES)}

    assert main(["data", "subset", "--data", str(data), "--split", "train", "--per-class", "3", "--seed", "1",
                 "--out", str(tmp_path / "cli")]) == 0
    cli_labels = np.load(tmp_path / "cli" / "train_labels.npy")
    assert np.bincount(cli_labels).tolist() == [3] * len(SIZES)
    assert json.loads((tmp_path / "cli" / "subset.json").read_text())["indices"] == \
        sample_per_class(labels, 3, seed=1).tolist()
    assert main(["data", "subset", "--data", str(data), "--fraction", "2", "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(ValueError, match="out of|lie in"):
        write_subset(data, "train", np.array([len(labels)]), tmp_path / "y", seed=0)
