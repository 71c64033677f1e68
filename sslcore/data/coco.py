"""COCO-format detection data: a validated reader, a torch Dataset, and VOC -> COCO conversion.

Format: Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014,
https://arxiv.org/abs/1405.0312; file layout as at https://cocodataset.org/#format-data. A file
holds ``images`` (id, file_name, width, height), ``annotations`` (id, image_id, category_id,
bbox = [x, y, width, height] in 0-based continuous pixels, area, iscrowd) and ``categories``
(id, name).

:class:`COCODetection` gives the same target format as :class:`sslcore.data.voc.VOCDetection`
(boxes 0-based ``x1, y1, x2, y2``; labels = the COCO ``category_id``, so category ids must be
>= 1, 0 being the background). :func:`voc_to_coco` turns a VOC split into a ground-truth dict
for ``pycocotools.coco.COCO``: difficult objects get ``iscrowd=1`` and ``ignore=1``, so
COCOeval neither rewards nor penalises detections of them (VOC's rule for difficult objects).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from sslcore.data.voc import load_image_tensor, read_voc_annotation, read_voc_split

log = logging.getLogger(__name__)
PathLike = Union[str, Path]

_REQUIRED = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def _check_entries(data: Dict[str, Any], section: str, where: str) -> Dict[int, Dict[str, Any]]:
    entries = data[section]
    if not isinstance(entries, list):
        raise ValueError(f"{where}: '{section}' must be a list, got {type(entries).__name__}")
    by_id: Dict[int, Dict[str, Any]] = {}
    for n, entry in enumerate(entries):
        missing = [k for k in _REQUIRED[section] if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise ValueError(f"{where}: {section}[{n}] lacks {missing}; every entry needs "
                             f"{list(_REQUIRED[section])}")
        if entry["id"] in by_id:
            raise ValueError(f"{where}: {section} id {entry['id']} appears twice")
        by_id[entry["id"]] = entry
    return by_id


def validate_coco(data: Dict[str, Any], where: str = "COCO data") -> Dict[str, Any]:
    """Check a COCO dict's structure (see :func:`read_coco`) and return it unchanged.

    Raises:
        ValueError: naming the missing key, duplicate id, dangling reference or bad box.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{where}: missing top-level key(s) {missing}; a COCO file needs "
                         "'images', 'annotations' and 'categories'")
    images = _check_entries(data, "images", where)
    categories = _check_entries(data, "categories", where)
    _check_entries(data, "annotations", where)
    for ann in data["annotations"]:
        if ann["image_id"] not in images:
            raise ValueError(f"{where}: annotation {ann['id']} names image_id {ann['image_id']}, "
                             "which is not in 'images'")
        if ann["category_id"] not in categories:
            raise ValueError(f"{where}: annotation {ann['id']} names category_id "
                             f"{ann['category_id']}, which is not in 'categories'")
        bbox = ann["bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or min(bbox[2:]) < 0:
            raise ValueError(f"{where}: annotation {ann['id']} bbox {bbox} is not [x, y, w, h] "
                             "with w, h >= 0")
    return data


def read_coco(json_path: PathLike) -> Dict[str, Any]:
    """Read and validate a COCO-format annotation file.

    Args:
        json_path: the ``.json`` file.

    Returns:
        The parsed dict, with at least ``images``, ``annotations`` and ``categories`` (lists of
        dicts holding the keys listed in the module docstring; ids unique, references valid).

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: invalid JSON or structure (the message names the key or entry).

    Example:
        >>> coco = read_coco("data_dataset_coco/annotations.json")
        >>> sorted(coco)[:3]
        ['annotations', 'categories', 'images']
    """
    path = Path(json_path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from exc
    return validate_coco(data, str(path))


def coco_boxes_to_xyxy(bboxes: Sequence[Sequence[float]]) -> torch.Tensor:
    """COCO [x, y, w, h] -> (M, 4) float32 [x1, y1, x2, y2] (x2 = x + w, y2 = y + h)."""
    boxes = torch.tensor([list(map(float, b)) for b in bboxes], dtype=torch.float32).reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)


class COCODetection(torch.utils.data.Dataset):
    """COCO-format detection samples with :class:`~sslcore.data.voc.VOCDetection`'s target format.

    Args:
        image_dir: the directory ``file_name`` entries are relative to.
        json_path: the COCO annotation file (:func:`read_coco`).
        transforms: optional ``(image, target) -> (image, target)``.

    Samples follow the order of ``images`` in the file. Boxes with zero width or height are
    dropped (as torchvision's COCO reference does); ``difficult`` is ``iscrowd`` or ``ignore``.

    Raises:
        FileNotFoundError, ValueError: from :func:`read_coco`; ValueError if a category id is 0
            or negative (0 is the background label).

    Example:
        >>> ds = COCODetection("data_dataset_coco", "data_dataset_coco/annotations.json")
        >>> image, target = ds[0]; target["boxes"].shape
        torch.Size([3, 4])
    """

    def __init__(self, image_dir: PathLike, json_path: PathLike, *,
                 transforms: Optional[Callable[[Any, Dict[str, Any]], Tuple[Any, Dict[str, Any]]]] = None
                 ) -> None:
        self.image_dir = Path(image_dir)
        self.coco = read_coco(json_path)
        self.images = list(self.coco["images"])
        self.categories = {c["id"]: c["name"] for c in self.coco["categories"]}
        self._per_image: Dict[Any, List[Dict[str, Any]]] = {im["id"]: [] for im in self.images}
        for ann in self.coco["annotations"]:
            if ann["category_id"] < 1:
                raise ValueError(f"{json_path}: annotation {ann['id']} has category_id "
                                 f"{ann['category_id']}; ids must be >= 1 (0 is the background)")
            self._per_image[ann["image_id"]].append(ann)
        self.transforms = transforms

    def __len__(self) -> int:
        """N, the number of images."""
        return len(self.images)

    def target(self, idx: int) -> Dict[str, Any]:
        """The target of image ``idx`` without loading the image.

        Returns:
            ``{"boxes": (M, 4) float32 0-based x1, y1, x2, y2, "labels": (M,) int64 category ids,
            "difficult": (M,) bool, "image_id": int (the COCO id)}``.
        """
        image = self.images[idx]
        anns = [a for a in self._per_image[image["id"]] if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        return {"boxes": coco_boxes_to_xyxy([a["bbox"] for a in anns]),
                "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                "difficult": torch.tensor([bool(a.get("iscrowd", 0) or a.get("ignore", 0)) for a in anns],
                                          dtype=torch.bool),
                "image_id": int(image["id"])}

    def __getitem__(self, idx: int) -> Tuple[Any, Dict[str, Any]]:
        """Image ``idx`` as a (3, H, W) uint8 tensor and its :meth:`target`.

        Raises:
            IndexError: if ``idx`` is outside [0, N).
            OSError: if the image file is missing or unreadable.
        """
        if not 0 <= idx < len(self.images):
            raise IndexError(f"image {idx} out of range for {len(self.images)} images")
        image = load_image_tensor(self.image_dir / self.images[idx]["file_name"])
        target = self.target(idx)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def voc_to_coco(root: PathLike, split: str, classes: Sequence[str]) -> Dict[str, Any]:
    """A COCO ground-truth dict for a VOC split, for ``pycocotools`` evaluation.

    Image ``id`` is the position in the split file (as in :class:`~sslcore.data.voc.VOCDetection`),
    ``file_name`` the JPEG name, category ``id`` = 1 + index in ``classes``. A VOC box
    (xmin, ymin, xmax, ymax, 1-based inclusive) becomes ``bbox = [xmin - 1, ymin - 1,
    xmax - xmin + 1, ymax - ymin + 1]`` and ``area = w * h`` (pixels). Difficult objects get
    ``iscrowd = 1`` and ``ignore = 1``: pycocotools' COCOeval then ignores detections matched to
    them and does not count them as misses. Objects of classes not in ``classes`` are left out.

    Args:
        root: the VOC root.
        split: the image set name.
        classes: the C class names.

    Returns:
        ``{"info", "images", "annotations", "categories"}`` (annotation ids from 1).

    Raises:
        FileNotFoundError, ValueError: from the VOC readers; ValueError for empty or duplicate
            ``classes``.

    Example:
        >>> from pycocotools.coco import COCO
        >>> gt = COCO(); gt.dataset = voc_to_coco("scenes/VOC2007", "test", classes); gt.createIndex()
    """
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be non-empty and distinct, got {list(classes)}")
    index = {name: k + 1 for k, name in enumerate(classes)}
    images, annotations = [], []
    for image_id, voc_id in enumerate(read_voc_split(root, split)):
        ann = read_voc_annotation(Path(root) / "Annotations" / f"{voc_id}.xml")
        images.append({"id": image_id, "file_name": ann["filename"], "width": ann["width"],
                       "height": ann["height"]})
        for obj in ann["objects"]:
            if obj["name"] not in index:
                continue
            xmin, ymin, xmax, ymax = obj["bbox"]
            w, h = xmax - xmin + 1.0, ymax - ymin + 1.0
            flag = int(obj["difficult"])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": index[obj["name"]], "bbox": [xmin - 1.0, ymin - 1.0, w, h],
                                "area": w * h, "iscrowd": flag, "ignore": flag})
    categories = [{"id": k + 1, "name": name, "supercategory": "none"} for k, name in enumerate(classes)]
    return {"info": {"description": f"{Path(root).name} {split}, converted from VOC"},
            "images": images, "annotations": annotations, "categories": categories}


__all__ = ["COCODetection", "coco_boxes_to_xyxy", "read_coco", "validate_coco", "voc_to_coco"]
