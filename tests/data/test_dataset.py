"""Sources, config resolution and SSLDataset: same data through both layouts, corrupt files skipped."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import SMALL_TRAIN, make_cfg, needs_fashion_mnist

from sslcore.data.collators import build_collator
from sslcore.data.dataset import SSLDataset, build_dataset, select_subset
from sslcore.data.fashion_mnist import DEFAULT_SOURCE_DIR, load_fashion_mnist, prepare_fashion_mnist
from sslcore.data.sources import DiskFilelistSource, DiskFolderSource, SyntheticSource, build_source

TO_TENSOR = [{"name": "ToTensor"}]


def _folder_cfg(root, **extra):
    return make_cfg({"DATA.TRAIN.DATA_SOURCES": ["disk_folder"],
                     "DATA.TRAIN.DATA_PATHS": [str(root / "train")],
                     "DATA.TRAIN.TRANSFORMS": TO_TENSOR, **extra})


def _filelist_cfg(root, **extra):
    return make_cfg({"DATA.TRAIN.DATA_SOURCES": ["disk_filelist"],
                     "DATA.TRAIN.DATA_PATHS": [str(root / "train_images.npy")],
                     "DATA.TRAIN.LABEL_SOURCES": ["disk_filelist"],
                     "DATA.TRAIN.LABEL_PATHS": [str(root / "train_labels.npy")],
                     "DATA.TRAIN.TRANSFORMS": TO_TENSOR, **extra})


@needs_fashion_mnist
def test_folder_and_filelist_give_the_same_images_and_labels(small_fmnist):
    folder = build_dataset(_folder_cfg(small_fmnist), "TRAIN", seed=0)
    filelist = build_dataset(_filelist_cfg(small_fmnist), "TRAIN", seed=0)
    assert len(folder) == len(filelist) == SMALL_TRAIN
    by_path = {os.path.realpath(folder.sources[0].describe(i)): i for i in range(len(folder))}
    assert len(by_path) == SMALL_TRAIN
    for j in range(len(filelist)):
        i = by_path[os.path.realpath(filelist.sources[0].describe(j))]
        a, b = folder[i], filelist[j]
        assert a["label"] == b["label"] and a["data_valid"] == b["data_valid"] == [True]
        torch.testing.assert_close(a["data"][0], b["data"][0], rtol=0, atol=0)
    assert folder.sources[0].classes[0] == "0_T-shirt_top"
    np.testing.assert_array_equal(np.sort(folder.labels()), np.sort(filelist.labels()))


@needs_fashion_mnist
@pytest.mark.parametrize("split", ["train", "test"])
def test_both_layouts_keep_the_original_fashion_mnist_label_ids(small_fmnist, split):
    _, raw_labels = load_fashion_mnist(DEFAULT_SOURCE_DIR, split)  # IDX: 0 = T-shirt/top, 9 = Ankle boot
    assert raw_labels[0] == 9  # the first image of both IDX files is an ankle boot
    layouts = {
        "disk_folder": _folder_cfg(small_fmnist, **{"DATA.TRAIN.DATA_PATHS": [str(small_fmnist / split)]}),
        "disk_filelist": _filelist_cfg(small_fmnist, **{
            "DATA.TRAIN.DATA_PATHS": [str(small_fmnist / f"{split}_images.npy")],
            "DATA.TRAIN.LABEL_PATHS": [str(small_fmnist / f"{split}_labels.npy")]}),
    }
    for layout, cfg in layouts.items():
        dataset = build_dataset(cfg, "TRAIN", seed=0)
        files = [Path(dataset.sources[0].describe(i)) for i in range(len(dataset))]
        labels = dataset.labels()
        np.testing.assert_array_equal(labels, raw_labels[[int(f.stem) for f in files]], err_msg=layout)
        assert {f.parent.name for f, y in zip(files, labels) if y == 0} == {"0_T-shirt_top"}, layout
        assert {f.parent.name for f, y in zip(files, labels) if y == 9} == {"9_Ankle_boot"}, layout
        assert labels[[f.stem == "00000" for f in files]].tolist() == [9], layout
    classes = build_dataset(layouts["disk_folder"], "TRAIN", seed=0).sources[0].classes
    assert classes[0] == "0_T-shirt_top" and classes[9] == "9_Ankle_boot" and len(classes) == 10


@needs_fashion_mnist
def test_dataset_names_resolve_through_the_catalog(small_fmnist):
    prepare_fashion_mnist(small_fmnist, limit_train=SMALL_TRAIN, limit_test=100)  # no-op + registration
    entries = (("fashion_mnist_folder", "disk_folder"), ("fashion_mnist_filelist", "disk_filelist"))
    for name, source in entries:
        cfg = make_cfg({"DATA.TEST.DATA_SOURCES": [source], "DATA.TEST.DATASET_NAMES": [name],
                        "DATA.TEST.TRANSFORMS": TO_TENSOR})
        dataset = build_dataset(cfg, "TEST", seed=0)
        assert len(dataset) == 100 and np.bincount(dataset.labels()).tolist() == [10] * 10
    bad = make_cfg({"DATA.TEST.DATA_SOURCES": ["disk_folder"],
                    "DATA.TEST.DATASET_NAMES": ["fashion_mnist_fold"]})
    with pytest.raises(KeyError, match="fashion_mnist_folder"):
        build_dataset(bad, "TEST")


@needs_fashion_mnist
def test_filelist_paths_relative_to_the_npy_or_absolute(small_fmnist, tmp_path, monkeypatch):
    copy = tmp_path / "moved"
    shutil.copytree(small_fmnist, copy)
    monkeypatch.chdir(tmp_path)
    moved = DiskFilelistSource(copy / "train_images.npy")
    assert moved.describe(0).startswith(str(copy)) and moved.load(0).size == (28, 28)
    absolute = np.array([str(copy / p) for p in np.load(copy / "train_images.npy")])
    np.save(tmp_path / "abs_images.npy", absolute)
    assert DiskFilelistSource(tmp_path / "abs_images.npy").describe(3) == absolute[3]
    np.save(tmp_path / "pickled.npy", np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="without pickle"):
        DiskFilelistSource(tmp_path / "pickled.npy")


@needs_fashion_mnist
def test_data_limit_and_label_types(small_fmnist):
    limited = build_dataset(_filelist_cfg(small_fmnist, **{"DATA.TRAIN.DATA_LIMIT": 50}), "TRAIN", seed=3)
    same = build_dataset(_filelist_cfg(small_fmnist, **{"DATA.TRAIN.DATA_LIMIT": 50}), "TRAIN", seed=3)
    other = build_dataset(_filelist_cfg(small_fmnist, **{"DATA.TRAIN.DATA_LIMIT": 50}), "TRAIN", seed=4)
    picked = [limited.source_index(i) for i in range(len(limited))]
    assert len(limited) == 50 and picked == sorted(set(picked))
    assert picked == [same.source_index(i) for i in range(50)] != [other.source_index(i) for i in range(50)]
    assert limited[49]["data_idx"] == [49]
    full_labels = np.load(small_fmnist / "train_labels.npy")
    assert limited[10]["label"] == [int(full_labels[picked[10]])]
    index = build_dataset(_folder_cfg(small_fmnist, **{"DATA.TRAIN.LABEL_TYPE": "sample_index"}), "TRAIN")
    assert index[17]["label"] == [17] and index.labels()[17] == 17
    zero = build_dataset(_folder_cfg(small_fmnist, **{"DATA.TRAIN.LABEL_TYPE": "zero"}), "TRAIN")
    assert zero[17]["label"] == [0]
    with pytest.raises(ValueError, match="DATA_LIMIT"):
        select_subset(10, 0, seed=0)


@needs_fashion_mnist
def test_unlabeled_filelist_needs_a_label_setting(small_fmnist):
    cfg = make_cfg({"DATA.TRAIN.DATA_SOURCES": ["disk_filelist"],
                    "DATA.TRAIN.DATA_PATHS": [str(small_fmnist / "train_images.npy")]})
    with pytest.raises(ValueError, match="LABEL_TYPE=zero"):
        build_dataset(cfg, "TRAIN")
    cfg.DATA.TRAIN.LABEL_TYPE = "zero"
    assert len(build_dataset(cfg, "TRAIN")) == SMALL_TRAIN


@needs_fashion_mnist
def test_corrupt_image_is_marked_invalid_and_skipped(small_fmnist, tmp_path, caplog):
    root = tmp_path / "corrupt"
    shutil.copytree(small_fmnist, root)
    rel = np.load(root / "train_images.npy")[7]
    (root / rel).write_bytes(b"\x89PNG garbage, not an image")
    cfg = _filelist_cfg(root, **{"DATA.TRAIN.TRANSFORMS": [{"name": "ImgReplicatePil", "num_times": 2},
                                                            {"name": "ToTensor"}]})
    dataset = build_dataset(cfg, "TRAIN", seed=0)
    with caplog.at_level(logging.WARNING, logger="sslcore.data.dataset"):
        bad = dataset[7]
        dataset[7]
    assert bad["data_valid"] == [False, False] and bad["data"][0].shape == (3, 28, 28)
    warnings = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and str(rel) in warnings[0].getMessage()  # once, with the path
    batch = build_collator("simclr_collator", {})([dataset[i] for i in range(5, 10)])
    assert batch["num_skipped"] == 1 and batch["data"][0].shape == (8, 3, 28, 28)
    assert 7 not in batch["data_idx"].tolist()


def test_synthetic_source_is_deterministic_per_index():
    cfg = make_cfg({"DATA.TRAIN.DATA_SOURCES": ["synthetic"], "DATA.TRAIN.TRANSFORMS": TO_TENSOR,
                    "DATA.TRAIN.SYNTHETIC.NUM_SAMPLES": 12, "DATA.TRAIN.SYNTHETIC.IMAGE_SIZE": 8,
                    "DATA.TRAIN.SYNTHETIC.NUM_CLASSES": 5})
    dataset = build_dataset(cfg, "TRAIN", seed=0)
    assert len(dataset) == 12 and dataset[7]["data"][0].shape == (3, 8, 8) and dataset[7]["label"] == [2]
    again = SyntheticSource(num_samples=12, image_size=8)
    assert np.array_equal(np.asarray(again.load(3)), np.asarray(dataset.sources[0].load(3)))
    assert not np.array_equal(np.asarray(again.load(3)), np.asarray(again.load(4)))


def test_configuration_errors(tmp_path):
    with pytest.raises(ValueError, match="DATA_SOURCES is empty"):
        build_dataset(make_cfg({}), "TRAIN")
    with pytest.raises(ValueError, match="TRAIN or TEST|one of"):
        build_dataset(make_cfg({}), "VAL")
    with pytest.raises(KeyError, match="Did you mean: disk_folder"):
        build_source("disk_foldr", str(tmp_path), {})
    with pytest.raises(FileNotFoundError, match="not a directory"):
        DiskFolderSource(tmp_path / "nowhere")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        DiskFolderSource(tmp_path)
    two_paths = make_cfg({"DATA.TRAIN.DATA_SOURCES": ["disk_folder"], "DATA.TRAIN.DATA_PATHS": ["/a", "/b"]})
    with pytest.raises(ValueError, match="2 DATA_PATHS for 1 DATA_SOURCES"):
        build_dataset(two_paths, "TRAIN")
    with pytest.raises(ValueError, match="equal length"):
        SSLDataset([SyntheticSource(num_samples=3), SyntheticSource(num_samples=4)], label_type="zero")
