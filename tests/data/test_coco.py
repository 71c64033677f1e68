"""COCO reader, COCODetection and voc_to_coco, on labelme's real photos and with pycocotools."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from labelme_helpers import copy_labelme_examples, labelme_class_names
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sslcore.data.coco import COCODetection, read_coco, voc_to_coco
from sslcore.data.voc import VOCDetection, read_voc_annotation, write_voc_annotation


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    root = copy_labelme_examples(tmp_path_factory.mktemp("labelme"))
    voc = root / "bbox_detection" / "data_dataset_voc"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    ids = sorted(p.stem for p in (voc / "Annotations").glob("*.xml"))
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n")
    return root


def test_coco_detection_matches_the_json(examples):
    coco_dir = examples / "instance_segmentation" / "data_dataset_coco"
    raw = json.loads((coco_dir / "annotations.json").read_text())
    assert read_coco(coco_dir / "annotations.json")["annotations"] == raw["annotations"]
    ds = COCODetection(coco_dir, coco_dir / "annotations.json")
    assert len(ds) == len(raw["images"]) == 3
    for idx, image_entry in enumerate(raw["images"]):
        image, target = ds[idx]
        anns = [a for a in raw["annotations"] if a["image_id"] == image_entry["id"]]
        expected = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        torch.testing.assert_close(target["boxes"], torch.tensor(expected, dtype=torch.float32))
        assert target["labels"].tolist() == [a["category_id"] for a in anns]
        assert target["difficult"].tolist() == [bool(a["iscrowd"]) for a in anns]
        assert target["image_id"] == image_entry["id"]
        assert image.dtype == torch.uint8 and image.shape == (3, image_entry["height"], image_entry["width"])


def _box_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_coco_boxes_agree_with_the_voc_instance_masks_of_the_same_photos(examples):
    """labelme exported the same polygons as COCO boxes and as VOC instance masks; each visible
    instance's mask box lies inside a COCO box of the same class (masks lose occluded pixels)."""
    seg = examples / "instance_segmentation"
    ds = COCODetection(seg / "data_dataset_coco", seg / "data_dataset_coco" / "annotations.json")
    names = labelme_class_names(seg / "data_dataset_voc")
    assert [ds.categories[k] for k in sorted(ds.categories)] == names
    matched = 0
    for idx, entry in enumerate(ds.images):
        stem = Path(entry["file_name"]).stem
        instances = np.load(seg / "data_dataset_voc" / "SegmentationObject" / f"{stem}.npy")
        classes = np.load(seg / "data_dataset_voc" / "SegmentationClass" / f"{stem}.npy")
        target = ds.target(idx)
        for instance in (i for i in np.unique(instances) if i > 0):
            mask = instances == instance
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            box = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)  # 0-based continuous
            label = int(np.unique(classes[mask])[0])
            ious = [_box_iou(box, b.tolist()) if lab == label else 0.0
                    for b, lab in zip(target["boxes"], target["labels"].tolist())]
            best = target["boxes"][int(np.argmax(ious))].tolist()
            assert max(ious) > 0.9, (stem, instance, box, ious)
            assert best[0] <= box[0] and best[1] <= box[1] and best[2] >= box[2] and best[3] >= box[3]
            matched += 1
    assert matched == 12


def test_voc_to_coco_round_trips_through_coco_detection(examples, tmp_path):
    voc = examples / "bbox_detection" / "data_dataset_voc"
    classes = [c for c in labelme_class_names(voc) if c != "_background_"]
    gt = voc_to_coco(voc, "test", classes)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    from_coco = COCODetection(voc / "JPEGImages", path)
    from_voc = VOCDetection(voc, "test", classes=classes)
    assert len(from_coco) == len(from_voc) == 3
    for idx in range(len(from_voc)):
        image_v, target_v = from_voc[idx]
        image_c, target_c = from_coco[idx]
        assert torch.equal(image_v, image_c)
        for key in ("boxes", "labels", "difficult"):
            torch.testing.assert_close(target_c[key], target_v[key])
        assert target_c["image_id"] == target_v["image_id"] == idx
        ann = read_voc_annotation(voc / "Annotations" / f"{from_voc.ids[idx]}.xml")
        areas = [a["area"] for a in gt["annotations"] if a["image_id"] == idx]
        assert areas == pytest.approx([(o["bbox"][2] - o["bbox"][0] + 1) * (o["bbox"][3] - o["bbox"][1] + 1)
                                       for o in ann["objects"]])


def _evaluate(gt: dict, detections: list) -> float:
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(gt)
    coco_gt.createIndex()
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(detections), iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return float(evaluator.stats[1])  # AP at IoU 0.5


def test_difficult_objects_are_ignored_by_pycocotools(tmp_path):
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    objects = [{"name": "cat", "bbox": (11, 11, 40, 40), "difficult": False, "truncated": False},
               {"name": "cat", "bbox": (51, 51, 70, 70), "difficult": True, "truncated": False}]
    write_voc_annotation(root / "Annotations" / "x.xml", filename="x.jpg", width=80, height=80, depth=3,
                         objects=objects)
    (root / "ImageSets" / "Main" / "test.txt").write_text("x\n")
    gt = voc_to_coco(root, "test", ["cat"])
    assert [(a["iscrowd"], a["ignore"]) for a in gt["annotations"]] == [(0, 0), (1, 1)]
    assert gt["annotations"][0]["bbox"] == [10.0, 10.0, 30.0, 30.0]
    hit = {"image_id": 0, "category_id": 1, "bbox": [10.0, 10.0, 30.0, 30.0], "score": 0.9}
    on_difficult = {"image_id": 0, "category_id": 1, "bbox": [50.0, 50.0, 20.0, 20.0], "score": 0.95}
    false_alarm = {"image_id": 0, "category_id": 1, "bbox": [0.0, 50.0, 20.0, 20.0], "score": 0.95}
    assert _evaluate(gt, [hit]) == pytest.approx(1.0)
    assert _evaluate(gt, [hit, on_difficult]) == pytest.approx(1.0)  # neither rewarded nor penalised
    assert _evaluate(gt, [hit, false_alarm]) < 0.99  # a real false positive ranked first does cost


def test_read_coco_errors_name_the_key(tmp_path):
    path = tmp_path / "c.json"
    good = {"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]}],
            "categories": [{"id": 1, "name": "cat"}]}
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "categories"}))
    with pytest.raises(ValueError, match="categories"):
        read_coco(path)
    path.write_text(json.dumps({**good, "annotations": [{"id": 1, "image_id": 7, "category_id": 1,
                                                         "bbox": [0, 0, 2, 2]}]}))
    with pytest.raises(ValueError, match="image_id 7"):
        read_coco(path)
    path.write_text(json.dumps({**good, "images": [{"id": 1, "width": 4, "height": 4}]}))
    with pytest.raises(ValueError, match="file_name"):
        read_coco(path)
    with pytest.raises(FileNotFoundError):
        read_coco(tmp_path / "missing.json")
