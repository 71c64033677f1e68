"""VOC reader, writer, multi-hot labels and VOCDetection, on labelme's real annotated photos."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from labelme_helpers import copy_labelme_examples, labelme_class_names
from PIL import Image

from sslcore.data.voc import (
    VOC_CLASSES,
    VOCDetection,
    read_voc_annotation,
    read_voc_split,
    voc_classes,
    voc_multi_hot_labels,
    write_voc_annotation,
)


@pytest.fixture(scope="module")
def bbox_voc(tmp_path_factory) -> Path:
    """labelme's bbox_detection VOC export plus the ImageSets file it lacks (all ids = test)."""
    root = copy_labelme_examples(tmp_path_factory.mktemp("labelme")) / "bbox_detection" / "data_dataset_voc"
    ids = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n")
    return root


def _plain_parse(path: Path) -> list:
    """(name, xmin, ymin, xmax, ymax) per object, read straight from the XML."""
    root = ET.parse(path).getroot()
    return [(o.findtext("name"), *(float(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")))
            for o in root.iter("object")]


def test_read_voc_annotation_matches_a_plain_parse(bbox_voc):
    paths = sorted((bbox_voc / "Annotations").glob("*.xml"))
    assert len(paths) == 3
    for path in paths:
        ann = read_voc_annotation(path)
        plain = ET.parse(path).getroot()
        assert ann["filename"] == plain.findtext("filename")
        assert (ann["width"], ann["height"]) == (int(plain.findtext("size/width")), int(plain.findtext("size/height")))
        assert [(o["name"], *o["bbox"]) for o in ann["objects"]] == _plain_parse(path)
        # labelme leaves <difficult/> and <truncated/> empty: read as not difficult / not truncated
        assert not any(o["difficult"] or o["truncated"] for o in ann["objects"])
        with Image.open(bbox_voc / "JPEGImages" / ann["filename"]) as image:
            assert image.size == (ann["width"], ann["height"])


def test_voc_detection_gives_zero_based_boxes_and_labels(bbox_voc):
    classes = [c for c in labelme_class_names(bbox_voc) if c != "_background_"]
    ds = VOCDetection(bbox_voc, "test", classes=classes)
    assert len(ds) == 3 and ds.ids == read_voc_split(bbox_voc, "test")
    for idx in range(len(ds)):
        image, target = ds[idx]
        plain = _plain_parse(bbox_voc / "Annotations" / f"{ds.ids[idx]}.xml")
        ann = ET.parse(bbox_voc / "Annotations" / f"{ds.ids[idx]}.xml").getroot()
        assert image.dtype == torch.uint8 and image.shape == (3, int(ann.findtext("size/height")),
                                                              int(ann.findtext("size/width")))
        expected = torch.tensor([[x0 - 1, y0 - 1, x1, y1] for _, x0, y0, x1, y1 in plain], dtype=torch.float32)
        torch.testing.assert_close(target["boxes"], expected)
        assert target["labels"].tolist() == [classes.index(name) + 1 for name, *_ in plain]
        assert target["labels"].dtype == torch.int64 and target["difficult"].dtype == torch.bool
        assert target["image_id"] == idx
        with Image.open(bbox_voc / "JPEGImages" / f"{ds.ids[idx]}.jpg") as pil:
            assert torch.equal(image, torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1))


def test_transforms_receive_image_and_target(bbox_voc):
    def flip(image, target):
        return image.flip(-1), {**target, "flipped": True}

    image, target = VOCDetection(bbox_voc, "test", transforms=flip)[0]
    plain, _ = VOCDetection(bbox_voc, "test")[0]
    assert torch.equal(image, plain.flip(-1)) and target["flipped"]


def _tiny_voc(root: Path) -> dict:
    """A 3-image VOC root with difficult objects; returns the expected multi-hot rows."""
    objects = {
        "a": [{"name": "cat", "bbox": (1, 2, 10, 12), "difficult": False, "truncated": False},
              {"name": "dog", "bbox": (3, 4, 5, 6), "difficult": True, "truncated": True}],
        "b": [{"name": "dog", "bbox": (2, 2, 8.5, 9), "difficult": True, "truncated": False},
              {"name": "dog", "bbox": (1, 1, 4, 4), "difficult": False, "truncated": False}],
        "c": [{"name": "bird", "bbox": (5, 5, 6, 6), "difficult": True, "truncated": False}],
    }
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, objs in objects.items():
        write_voc_annotation(root / "Annotations" / f"{image_id}.xml", filename=f"{image_id}.jpg", width=16,
                             height=14, depth=3, objects=objs)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("a\nb\nc\n")
    for name in ("bird", "cat", "dog"):
        (root / "ImageSets" / "Main" / f"{name}_trainval.txt").write_text("a -1\nb -1\nc -1\n")
    #            bird cat dog
    return {"a": [-1, 1, 0], "b": [-1, -1, 1], "c": [0, -1, -1], "objects": objects}


def test_write_read_round_trip_and_multi_hot(tmp_path):
    expected = _tiny_voc(tmp_path)
    for image_id, objs in expected["objects"].items():
        ann = read_voc_annotation(tmp_path / "Annotations" / f"{image_id}.xml")
        assert (ann["width"], ann["height"], ann["depth"]) == (16, 14, 3)
        got = [(o["name"], o["bbox"], o["difficult"], o["truncated"]) for o in ann["objects"]]
        assert got == [(o["name"], tuple(float(v) for v in o["bbox"]), o["difficult"], o["truncated"]) for o in objs]
    assert voc_classes(tmp_path) == ["bird", "cat", "dog"]
    labels = voc_multi_hot_labels(tmp_path, "trainval", ["bird", "cat", "dog"])
    assert labels.dtype == np.int8
    assert labels.tolist() == [expected["a"], expected["b"], expected["c"]]
    target = VOCDetection(tmp_path, "trainval").target(0)
    assert target["difficult"].tolist() == [False, True] and target["labels"].tolist() == [2, 3]


def test_errors_name_the_problem(tmp_path, bbox_voc):
    with pytest.raises(FileNotFoundError, match=r"splits present: \['test'\]"):
        read_voc_split(bbox_voc, "trainval")
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><size><width>4</width><height>4</height></size><object><name>x</name>"
                   "<bndbox><xmin>3</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>")
    with pytest.raises(ValueError, match="xmax < xmin"):
        read_voc_annotation(bad)
    bad.write_text("<annotation><size><width>4")
    with pytest.raises(ValueError, match="not valid XML"):
        read_voc_annotation(bad)
    assert voc_classes(None) == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    with pytest.raises(ValueError, match="distinct"):
        VOCDetection(bbox_voc, "test", classes=["person", "person"])
