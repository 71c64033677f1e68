"""Fashion-MNIST preparation, manifest verification and dataset copies."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from data_helpers import SMALL_TEST, SMALL_TRAIN, needs_fashion_mnist
from PIL import Image

from sslcore.data.catalog import get_dataset_paths
from sslcore.data.fashion_mnist import CLASSES, DEFAULT_SOURCE_DIR, load_fashion_mnist, prepare_fashion_mnist
from sslcore.data.manifest import LISTING_NAME, MANIFEST_NAME, verify_dataset
from sslcore.data.prepare import prepare_dataset

pytestmark = needs_fashion_mnist


def _mtimes(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_small_prepare_writes_both_layouts(small_fmnist):
    root = small_fmnist
    assert CLASSES[0] == "0_T-shirt_top" and CLASSES[9] == "9_Ankle_boot"
    assert sorted(p.name for p in (root / "train").iterdir()) == list(CLASSES)  # sorted = id order
    for split, count in (("train", SMALL_TRAIN), ("test", SMALL_TEST)):
        pngs = sorted((root / split).glob("*/*.png"))
        assert len(pngs) == count
        paths = np.load(root / f"{split}_images.npy")
        labels = np.load(root / f"{split}_labels.npy")
        assert paths.dtype.kind == "U" and labels.dtype == np.int64 and len(paths) == len(labels) == count
        assert not any(Path(p).is_absolute() for p in paths)
        # class-stratified: every class equally often
        assert np.bincount(labels, minlength=10).tolist() == [count // 10] * 10
        # each listed file exists and sits in the folder of its label
        for rel, label in zip(paths, labels):
            assert Path(rel).parent.name == CLASSES[label] and (root / rel).is_file()
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["layouts"] == ["disk_folder", "disk_filelist"]
    assert manifest["splits"]["train"]["num_images"] == SMALL_TRAIN
    assert manifest["splits"]["test"]["num_images"] == SMALL_TEST
    assert manifest["classes"] == list(CLASSES) and "source_label_ids" not in manifest
    assert manifest["total_bytes"] == sum(p.stat().st_size for p in root.rglob("*")
                                          if p.is_file() and p.name not in (MANIFEST_NAME, LISTING_NAME))


def test_pngs_hold_the_exact_idx_pixels(small_fmnist):
    images, labels = load_fashion_mnist(DEFAULT_SOURCE_DIR, "test")
    paths = np.load(small_fmnist / "test_images.npy")
    for rel in paths[::17]:
        index = int(Path(rel).stem)
        with Image.open(small_fmnist / rel) as image:
            assert image.format == "PNG" and image.mode == "L"
            decoded = np.asarray(image)
        assert decoded.shape == (28, 28) and decoded.dtype == np.uint8
        np.testing.assert_array_equal(decoded, images[index])


def test_prepare_registers_both_catalog_entries(small_fmnist, monkeypatch, tmp_path):
    monkeypatch.setenv("SSLCORE_DATASET_CATALOG", str(tmp_path / "cat.json"))
    prepare_fashion_mnist(small_fmnist, limit_train=SMALL_TRAIN, limit_test=SMALL_TEST)
    data, labels = get_dataset_paths("fashion_mnist_filelist", "TEST")
    assert Path(data) == small_fmnist.resolve() / "test_images.npy"
    assert Path(labels) == small_fmnist.resolve() / "test_labels.npy"
    assert Path(get_dataset_paths("fashion_mnist_folder", "train")[0]) == small_fmnist.resolve() / "train"


def test_prepare_is_idempotent_and_redoes_changed_limits(tmp_path):
    root = tmp_path / "fm"
    prepare_fashion_mnist(root, limit_train=30, limit_test=10, register_catalog=False)
    before = _mtimes(root)
    start = time.perf_counter()
    prepare_fashion_mnist(root, limit_train=30, limit_test=10, register_catalog=False)
    assert time.perf_counter() - start < 2.0
    assert _mtimes(root) == before  # nothing rewritten
    manifest = prepare_dataset("fashion_mnist", root, limit_train=20, limit_test=10)
    assert manifest["splits"]["train"]["num_images"] == 20
    assert len(list((root / "train").glob("*/*.png"))) == 20  # no stale files from the 30-image run


def test_directory_of_an_earlier_version_is_prepared_again(tmp_path):
    root = prepare_fashion_mnist(tmp_path / "fm", limit_train=20, limit_test=10, register_catalog=False)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    current = dict(manifest["content"])
    # as written before the class folders kept the original ids (sorted names, Ankle_boot = 0)
    manifest["content"].pop("version")
    manifest["content"]["label_order"] = "sorted_class_folders"
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    stale = sorted((root / "train").glob("*/*.png"))[0]
    stale.write_bytes(b"\0" * stale.stat().st_size)  # same size: verification alone cannot tell
    verify_dataset(root)
    with pytest.raises(FileNotFoundError, match="apt-get install"):  # not taken as prepared
        prepare_fashion_mnist(root, source_dir=tmp_path / "no_raw_files", limit_train=20, limit_test=10,
                              register_catalog=False)
    prepare_fashion_mnist(root, limit_train=20, limit_test=10, register_catalog=False)
    assert json.loads((root / MANIFEST_NAME).read_text())["content"] == current
    with Image.open(stale) as image:  # written again
        assert image.size == (28, 28)


def test_verify_names_missing_and_resized_files(tmp_path):
    root = prepare_fashion_mnist(tmp_path / "fm", limit_train=20, limit_test=10, register_catalog=False)
    assert verify_dataset(root)["splits"]["test"]["num_images"] == 10
    victim = sorted((root / "test").glob("*/*.png"))[0]
    victim.unlink()
    with pytest.raises(ValueError, match=f"missing.*{victim.parent.name}/{victim.name}"):
        verify_dataset(root)
    prepare_fashion_mnist(root, limit_train=20, limit_test=10, register_catalog=False)  # repairs
    other = sorted((root / "train").glob("*/*.png"))[3]
    other.write_bytes(other.read_bytes() + b"\0")
    with pytest.raises(ValueError, match=f"different size.*{other.name}"):
        verify_dataset(root)


def test_copy_directory_verifies_and_is_a_noop_the_second_time(small_fmnist, tmp_path):
    copy = tmp_path / "copy"
    manifest = prepare_dataset(str(small_fmnist), copy)
    source_manifest = json.loads((small_fmnist / MANIFEST_NAME).read_text())
    assert manifest["listing_digest"] == source_manifest["listing_digest"]
    assert len(list((copy / "train").glob("*/*.png"))) == SMALL_TRAIN
    before = _mtimes(copy)
    prepare_dataset(str(small_fmnist), copy)
    assert _mtimes(copy) == before
    victim = sorted((copy / "train").glob("*/*.png"))[5]
    victim.unlink()
    with pytest.raises(ValueError, match=victim.name):
        verify_dataset(copy)
    prepare_dataset(str(small_fmnist), copy)  # a broken copy is copied again
    assert victim.is_file()


def test_copy_of_a_plain_directory_gets_a_manifest(tmp_path):
    source = tmp_path / "plain"
    for split, cls, name in (("train", "cat", "a.png"), ("train", "dog", "b.png"), ("val", "cat", "c.png")):
        (source / split / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (1, 2, 3)).save(source / split / cls / name)
    manifest = prepare_dataset(str(source), tmp_path / "out", to_filelist=False)
    assert manifest["splits"] == {"train": {"num_images": 2, "bytes": manifest["splits"]["train"]["bytes"]},
                                  "val": {"num_images": 1, "bytes": manifest["splits"]["val"]["bytes"]}}
    assert manifest["classes"] == ["cat", "dog"] and manifest["layouts"] == ["disk_folder"]
    assert not (source / MANIFEST_NAME).exists()  # the source is never modified


def test_a_folder_copy_gains_the_filelist_layout_and_stays_a_no_op(tmp_path):
    source = tmp_path / "plain"
    for split, cls, name in (("train", "dog", "b.png"), ("train", "cat", "a.png"),
                             ("val", "dog", "c.png")):
        (source / split / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (1, 2, 3)).save(source / split / cls / name)
    out = tmp_path / "out"
    manifest = prepare_dataset(str(source), out)
    assert manifest["layouts"] == ["disk_folder", "disk_filelist"]
    assert manifest["filelist_splits"] == ["train", "val"]
    assert manifest["content"]["converted"] == "disk_folder -> disk_filelist"
    assert np.load(out / "train_images.npy").tolist() == ["train/cat/a.png", "train/dog/b.png"]
    assert np.load(out / "train_labels.npy").tolist() == [0, 1]
    assert np.load(out / "val_labels.npy").tolist() == [1]  # class ids shared across splits
    before = _mtimes(out)
    assert prepare_dataset(str(source), out)["listing_digest"] == manifest["listing_digest"]
    assert _mtimes(out) == before, "a verified converted copy was copied again"


def test_source_errors(tmp_path, small_fmnist):
    with pytest.raises(FileNotFoundError, match="neither a built-in set"):
        prepare_dataset("fashion_mnst", tmp_path / "x")
    with pytest.raises(ValueError, match="ftp:// scheme is not supported"):
        prepare_dataset("ftp://host/data", tmp_path / "x")
    with pytest.raises(ValueError, match="must name an archive"):
        prepare_dataset("https://example.com/data/", tmp_path / "x")
    with pytest.raises(ValueError, match="built-in sets only"):
        prepare_dataset(str(small_fmnist), tmp_path / "x", limit_train=5)
    with pytest.raises(ValueError, match="overlap"):
        prepare_dataset(str(small_fmnist), small_fmnist / "inner")


@pytest.mark.slow
def test_full_fashion_mnist(tmp_path):
    start = time.perf_counter()
    root = prepare_fashion_mnist(tmp_path / "full", register_catalog=False)
    seconds = time.perf_counter() - start
    manifest = verify_dataset(root)
    assert manifest["splits"]["train"]["num_images"] == 60000
    assert manifest["splits"]["test"]["num_images"] == 10000
    assert len(np.load(root / "train_images.npy")) == 60000
    assert np.bincount(np.load(root / "test_labels.npy")).tolist() == [1000] * 10
    print(f"full Fashion-MNIST prepared in {seconds:.1f} s")
    assert seconds < 90


def test_prepared_directory_is_accepted_without_the_raw_files(small_fmnist, tmp_path):
    copy = tmp_path / "copy"
    prepare_dataset(str(small_fmnist), copy)
    before = _mtimes(copy)
    prepare_fashion_mnist(copy, source_dir=tmp_path / "no_raw_files", limit_train=SMALL_TRAIN,
                          limit_test=SMALL_TEST, register_catalog=False)
    assert _mtimes(copy) == before
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        prepare_fashion_mnist(copy, source_dir=tmp_path / "no_raw_files", limit_train=10,
                              register_catalog=False)
    verify_dataset(copy)  # the failed call deleted nothing
