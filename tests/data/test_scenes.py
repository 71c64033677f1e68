"""Fashion-MNIST scenes: determinism, exact boxes, VOC files, the disk_filelist view and the CLI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import make_cfg, needs_fashion_mnist
from PIL import Image

from sslcore.cli import main
from sslcore.data import build_dataset
from sslcore.data.collators import default_collate
from sslcore.data.fashion_mnist import DEFAULT_SOURCE_DIR, load_fashion_mnist
from sslcore.data.scenes import (
    DIFFICULT_SHARED,
    MAX_BOX_OVERLAP,
    SCENE_CLASSES,
    build_fashion_mnist_scenes,
    render_scene,
    scene_rng,
)
from sslcore.data.voc import VOCDetection, voc_classes, voc_multi_hot_labels

pytestmark = needs_fashion_mnist
N_TRAINVAL, N_TEST, MAX_ITEMS = 24, 16, 4


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "a"
    build_fashion_mnist_scenes(out, num_trainval=N_TRAINVAL, num_test=N_TEST, max_items=MAX_ITEMS, seed=0,
                               register_catalog=False)
    return out


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name not in ("dataset.json", "dataset_files.tsv")}


def _plain_objects(xml_path: Path) -> list:
    root = ET.parse(xml_path).getroot()
    return [(o.findtext("name"), int(o.findtext("difficult")),
             tuple(int(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")))
            for o in root.iter("object")]


def test_same_seed_same_bytes_other_seed_differs(scenes, tmp_path):
    mtimes = {p: p.stat().st_mtime_ns for p in scenes.rglob("*") if p.is_file()}
    build_fashion_mnist_scenes(scenes, num_trainval=N_TRAINVAL, num_test=N_TEST, max_items=MAX_ITEMS, seed=0,
                               register_catalog=False)
    assert {p: p.stat().st_mtime_ns for p in scenes.rglob("*") if p.is_file()} == mtimes  # already built
    again = build_fashion_mnist_scenes(tmp_path / "b", num_trainval=N_TRAINVAL, num_test=N_TEST,
                                       max_items=MAX_ITEMS, seed=0, register_catalog=False)
    assert _files(tmp_path / "b") == _files(scenes)
    assert again["listing_digest"] == json.loads((scenes / "dataset.json").read_text())["listing_digest"]
    build_fashion_mnist_scenes(tmp_path / "c", num_trainval=N_TRAINVAL, num_test=N_TEST, max_items=MAX_ITEMS,
                               seed=1, register_catalog=False)
    other = _files(tmp_path / "c")
    same = [name for name in other if name.startswith("VOC2007/Annotations/") and other[name] == _files(scenes)[name]]
    assert len(same) < N_TRAINVAL + N_TEST  # annotations differ
    assert other["VOC2007/JPEGImages/000000.jpg"] != _files(scenes)["VOC2007/JPEGImages/000000.jpg"]


@pytest.mark.parametrize("split,first", [("trainval", 0), ("test", N_TRAINVAL)])
def test_boxes_hold_exactly_their_items_pixels(scenes, split, first):
    images, labels = load_fashion_mnist(DEFAULT_SOURCE_DIR, "train" if split == "trainval" else "test")
    count = N_TRAINVAL if split == "trainval" else N_TEST
    sizes = []
    for index in range(count):
        canvas, objects = render_scene(images, labels, scene_rng(0, split, index), canvas_size=96,
                                       max_items=MAX_ITEMS)
        assert canvas.shape == (96, 96) and canvas.dtype == np.uint8
        assert 1 <= len(objects) <= MAX_ITEMS
        sizes.append(len(objects))
        union = np.zeros_like(canvas, dtype=bool)
        for obj in objects:
            ys, xs = np.nonzero(obj["mask"])
            # VOC 1-based inclusive box == the tight box of the item's non-zero pixels
            assert obj["bbox"] == (xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1)
            assert np.all(canvas[obj["mask"]] > 0)
            assert obj["name"] == SCENE_CLASSES[labels[obj["source_index"]]]
            others = np.logical_or.reduce([o["mask"] for o in objects if o is not obj] + [union & False])
            assert obj["difficult"] == ((obj["mask"] & others).sum() > DIFFICULT_SHARED * obj["mask"].sum())
            union |= obj["mask"]
        assert np.array_equal(union, canvas > 0)  # nothing outside the items
        for a in objects:  # limited overlap between boxes
            for b in objects:
                if a is not b:
                    iw = min(a["bbox"][2], b["bbox"][2]) - max(a["bbox"][0], b["bbox"][0]) + 1
                    ih = min(a["bbox"][3], b["bbox"][3]) - max(a["bbox"][1], b["bbox"][1]) + 1
                    area = min((o["bbox"][2] - o["bbox"][0] + 1) * (o["bbox"][3] - o["bbox"][1] + 1) for o in (a, b))
                    assert max(iw, 0) * max(ih, 0) <= MAX_BOX_OVERLAP * area
        image_id = f"{first + index:06d}"
        written = _plain_objects(scenes / "VOC2007" / "Annotations" / f"{image_id}.xml")
        assert written == [(o["name"], int(o["difficult"]), o["bbox"]) for o in objects]
        with Image.open(scenes / "VOC2007" / "JPEGImages" / f"{image_id}.jpg") as jpeg:
            assert jpeg.mode == "RGB" and jpeg.size == (96, 96)
            decoded = np.asarray(jpeg, dtype=np.float32)
        assert np.abs(decoded.mean(axis=2) - canvas).mean() < 3.0  # the same picture, up to JPEG loss
    assert len(set(sizes)) > 1


def test_image_sets_and_labels_agree_with_the_annotations(scenes):
    main_dir = scenes / "VOC2007" / "ImageSets" / "Main"
    for split, filelist, first, count in (("trainval", "train", 0, N_TRAINVAL), ("test", "test", N_TRAINVAL, N_TEST)):
        ids = main_dir.joinpath(f"{split}.txt").read_text().split()
        assert ids == [f"{first + i:06d}" for i in range(count)]
        expected = np.full((count, len(SCENE_CLASSES)), -1)
        for row, image_id in enumerate(ids):
            for name, difficult, _ in _plain_objects(scenes / "VOC2007" / "Annotations" / f"{image_id}.xml"):
                c = SCENE_CLASSES.index(name)
                expected[row, c] = max(expected[row, c], 0 if difficult else 1)
        for c, name in enumerate(SCENE_CLASSES):
            lines = [line.split() for line in main_dir.joinpath(f"{name}_{split}.txt").read_text().splitlines()]
            assert [line[0] for line in lines] == ids
            assert [int(line[1]) for line in lines] == expected[:, c].tolist()
        labels = np.load(scenes / f"{filelist}_labels.npy")
        assert labels.shape == (count, 10) and labels.dtype == np.int8
        assert np.array_equal(labels, expected)
        assert np.array_equal(voc_multi_hot_labels(scenes / "VOC2007", split, SCENE_CLASSES), expected)
        paths = np.load(scenes / f"{filelist}_images.npy")
        assert paths.tolist() == [f"VOC2007/JPEGImages/{i}.jpg" for i in ids]


def test_voc_detection_reads_the_scenes(scenes):
    root = scenes / "VOC2007"
    assert voc_classes(root) == sorted(SCENE_CLASSES)
    ds = VOCDetection(root, "test", classes=SCENE_CLASSES)
    assert len(ds) == N_TEST
    image, target = ds[3]
    written = _plain_objects(root / "Annotations" / f"{N_TRAINVAL + 3:06d}.xml")
    assert image.shape == (3, 96, 96) and image.dtype == torch.uint8
    expected = [[x0 - 1, y0 - 1, x1, y1] for _, _, (x0, y0, x1, y1) in written]
    assert target["boxes"].tolist() == expected
    assert target["labels"].tolist() == [SCENE_CLASSES.index(n) + 1 for n, _, _ in written]
    assert target["difficult"].tolist() == [bool(d) for _, d, _ in written]


def test_multi_hot_labels_reach_the_batches(scenes):
    overrides = {}
    for split, name in (("TRAIN", "train"), ("TEST", "test")):
        overrides.update({f"DATA.{split}.DATA_SOURCES": ["disk_filelist"],
                          f"DATA.{split}.LABEL_SOURCES": ["disk_filelist"],
                          f"DATA.{split}.DATA_PATHS": [str(scenes / f"{name}_images.npy")],
                          f"DATA.{split}.LABEL_PATHS": [str(scenes / f"{name}_labels.npy")],
                          f"DATA.{split}.TRANSFORMS": [{"name": "ToTensor"}]})
    dataset = build_dataset(make_cfg(overrides), "TEST")
    batch = default_collate([dataset[i] for i in range(5)])
    assert batch["data"][0].shape == (5, 3, 96, 96)
    assert batch["label"].dtype == torch.int64
    assert batch["label"].tolist() == np.load(scenes / "test_labels.npy")[:5].tolist()


def test_cli_prepare_and_argument_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLCORE_DATASET_CATALOG", str(tmp_path / "catalog.json"))
    out = tmp_path / "cli"
    assert main(["data", "prepare", "fashion_mnist_scenes", "--out", str(out), "--limit-train", "6",
                 "--limit-test", "4", "--canvas-size", "112", "--seed", "2"]) == 0
    assert (out / "VOC2007" / "ImageSets" / "Main" / "trainval.txt").read_text().split() == \
        [f"{i:06d}" for i in range(6)]
    with Image.open(out / "VOC2007" / "JPEGImages" / "000009.jpg") as image:
        assert image.size == (112, 112)
    from sslcore.data.catalog import get_dataset_paths

    assert Path(get_dataset_paths("fashion_mnist_scenes_filelist", "TEST")[1]) == out.resolve() / "test_labels.npy"
    assert main(["data", "prepare", "fashion_mnist", "--out", str(tmp_path / "x"), "--seed", "1"]) == 2
    with pytest.raises(ValueError, match="canvas_size"):
        build_fashion_mnist_scenes(tmp_path / "y", canvas_size=40)
    with pytest.raises(ValueError, match="max_items"):
        build_fashion_mnist_scenes(tmp_path / "y", max_items=0)


def test_extract_features_writes_multi_hot_targets(scenes, tmp_path):
    from sslcore.benchmarks.features import load_features
    from sslcore.engine.launcher import run_engine

    out = tmp_path / "features"
    data = [f"config.DATA.{s}.{k}=[{scenes}/{s.lower()}_{f}.npy]" for s in ("TRAIN", "TEST")
            for k, f in (("DATA_PATHS", "images"), ("LABEL_PATHS", "labels"))]
    run_engine(["config=feature_extraction/extract_resnet_fashion_mnist", *data,
                "config.DATA.TRAIN.DATASET_NAMES=[]", "config.DATA.TEST.DATASET_NAMES=[]",
                "config.DATA.NUM_DATALOADER_WORKERS=0", "config.MACHINE.DEVICE=cpu",
                f"config.EXTRACT_FEATURES.OUTPUT_DIR={out}", f"config.CHECKPOINT.DIR={tmp_path}"],
               engine_name="extract_features")
    for split, n in (("train", N_TRAINVAL), ("test", N_TEST)):
        feats, targets, inds = load_features(out, split, "res5avg")
        assert feats.shape == (n, 64) and np.isfinite(feats).all()
        assert targets.shape == (n, 10) and targets.dtype == np.int64
        np.testing.assert_array_equal(targets, np.load(scenes / f"{split}_labels.npy"))
        np.testing.assert_array_equal(inds, np.arange(n))
