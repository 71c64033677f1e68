"""The dataset catalog (VISSL's dataset_catalog.json format)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sslcore.data.catalog import (
    catalog_path,
    get_dataset_paths,
    list_datasets,
    load_catalog,
    register_dataset,
)


def test_round_trip_in_vissl_format(catalog_file):
    register_dataset("toy", train=["/d/train_images.npy", "/d/train_labels.npy"],
                     val=["/d/val_images.npy", "/d/val_labels.npy"])
    register_dataset("other", train=["/o/train", "/o/train"])
    assert catalog_path() == catalog_file
    on_disk = json.loads(catalog_file.read_text())
    assert on_disk["toy"] == {"train": ["/d/train_images.npy", "/d/train_labels.npy"],
                              "val": ["/d/val_images.npy", "/d/val_labels.npy"]}
    assert get_dataset_paths("toy", "train") == ("/d/train_images.npy", "/d/train_labels.npy")
    assert get_dataset_paths("toy", "TEST") == ("/d/val_images.npy", "/d/val_labels.npy")  # TEST reads val
    assert list_datasets() == ["other", "toy"]
    register_dataset("toy", train=["/new/train", "/new/train"])  # replacing an entry
    assert get_dataset_paths("toy", "train") == ("/new/train", "/new/train")


def test_unknown_name_lists_close_matches(catalog_file):
    register_dataset("fashion_mnist_folder", train=["/a", "/a"])
    with pytest.raises(KeyError, match="Did you mean: fashion_mnist_folder") as info:
        get_dataset_paths("fashion_mnist_foldr", "train")
    assert str(catalog_file) in str(info.value)
    with pytest.raises(KeyError, match="no 'val' split"):
        get_dataset_paths("fashion_mnist_folder", "val")
    with pytest.raises(ValueError, match="train, val or test"):
        get_dataset_paths("fashion_mnist_folder", "validation")


def test_default_location_is_under_home(monkeypatch, tmp_path):
    monkeypatch.delenv("SSLCORE_DATASET_CATALOG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert catalog_path() == Path(tmp_path) / ".sslcore" / "dataset_catalog.json"
    register_dataset("x", val=["/v", "/v"])
    assert (tmp_path / ".sslcore" / "dataset_catalog.json").is_file()


def test_malformed_catalogs_are_rejected(catalog_file):
    catalog_file.parent.mkdir(parents=True)
    catalog_file.write_text('{"bad": {"train": ["/only_one_path"]}}')
    with pytest.raises(ValueError, match=r"'bad' split 'train' must be \[data_path, label_path\]"):
        load_catalog()
    catalog_file.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_catalog()
    with pytest.raises(ValueError, match="give train="):
        register_dataset("empty")
