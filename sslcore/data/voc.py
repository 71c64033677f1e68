"""PASCAL VOC detection data: annotation XML, image sets, multi-hot labels and a torch Dataset.

Protocol: Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010,
http://host.robots.ox.ac.uk/pascal/VOC/voc2007/ (devkit doc, section "Annotation"). A VOC root
(``.../VOC2007``) holds::

    Annotations/<id>.xml                 one <annotation> per image
    ImageSets/Main/<split>.txt           the image ids of a split (trainval, test, ...)
    ImageSets/Main/<class>_<split>.txt   "<id> <flag>": 1 present, -1 absent, 0 difficult only
    JPEGImages/<id>.jpg

Coordinates. VOC boxes are 1-based inclusive pixel indices (a box covering only the top-left
pixel is ``xmin=ymin=xmax=ymax=1``). :class:`VOCDetection` gives torchvision's convention
instead: 0-based continuous ``x1, y1, x2, y2`` with pixel ``i`` spanning ``[i, i + 1)``, so
``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` (the conversion detectron2's VOC loader
makes). Multi-hot labels follow VISSL's VOC07 SVM convention: 1 present (some non-difficult
object), 0 present only as difficult objects, -1 absent.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

PathLike = Union[str, Path]

# the 20 PASCAL VOC classes, in the devkit's (alphabetical) order
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


def _text(node: ET.Element, tag: str, where: str, *, required: bool = True) -> Optional[str]:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise ValueError(f"{where}: <{tag}> is missing or empty; the annotation is malformed")
        return None
    return child.text.strip()


def _flag(node: ET.Element, tag: str, where: str) -> bool:
    """A VOC 0/1 flag; missing or empty (as labelme writes) counts as 0."""
    value = _text(node, tag, where, required=False)
    if value is None:
        return False
    if value not in ("0", "1"):
        raise ValueError(f"{where}: <{tag}> must be 0 or 1, got {value!r}")
    return value == "1"


def read_voc_annotation(xml_path: PathLike) -> Dict[str, Any]:
    """Parse one VOC annotation file.

    Args:
        xml_path: ``Annotations/<id>.xml``.

    Returns:
        ``{"filename": str, "width": int, "height": int, "depth": int, "objects": [{"name": str,
        "bbox": (xmin, ymin, xmax, ymax) floats in VOC 1-based inclusive pixels, "difficult":
        bool, "truncated": bool}, ...]}``; ``depth`` is 3 when the file omits it.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if the XML is malformed, a field is missing or not a number, or a box has
            ``xmax < xmin`` or ``ymax < ymin``.

    Example:
        >>> ann = read_voc_annotation("VOC2007/Annotations/000005.xml")
        >>> ann["objects"][0]["name"], ann["objects"][0]["bbox"]
        ('chair', (263.0, 211.0, 324.0, 339.0))
    """
    path = Path(xml_path)
    if not path.is_file():
        raise FileNotFoundError(f"VOC annotation {path} does not exist; check the VOC root and split")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path} is not valid XML ({exc})") from exc
    size = root.find("size")
    if size is None:
        raise ValueError(f"{path}: <size> is missing; the annotation is malformed")
    try:
        width, height = int(float(_text(size, "width", str(path)))), int(float(_text(size, "height", str(path))))
        depth = int(_text(size, "depth", str(path), required=False) or 3)
    except ValueError as exc:
        raise ValueError(f"{path}: <size> holds a non-number ({exc})") from exc
    objects = [_read_object(node, f"{path} object {i}") for i, node in enumerate(root.findall("object"))]
    return {"filename": _text(root, "filename", str(path)), "width": width, "height": height,
            "depth": depth, "objects": objects}


def _read_object(node: ET.Element, where: str) -> Dict[str, Any]:
    box = node.find("bndbox")
    if box is None:
        raise ValueError(f"{where}: <bndbox> is missing")
    try:
        bbox = tuple(float(_text(box, tag, where)) for tag in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError as exc:
        raise ValueError(f"{where}: a <bndbox> coordinate is not a number ({exc})") from exc
    if bbox[2] < bbox[0] or bbox[3] < bbox[1]:
        raise ValueError(f"{where}: box {bbox} has xmax < xmin or ymax < ymin")
    return {"name": _text(node, "name", where), "bbox": bbox,
            "difficult": _flag(node, "difficult", where), "truncated": _flag(node, "truncated", where)}


_ANNOTATION_HEAD = """<annotation>
  <folder>{folder}</folder>
  <filename>{filename}</filename>
  <size>
    <width>{width}</width>
    <height>{height}</height>
    <depth>{depth}</depth>
  </size>
  <segmented>0</segmented>
"""
_ANNOTATION_OBJECT = """  <object>
    <name>{name}</name>
    <pose>{pose}</pose>
    <truncated>{truncated}</truncated>
    <difficult>{difficult}</difficult>
    <bndbox>
      <xmin>{0}</xmin>
      <ymin>{1}</ymin>
      <xmax>{2}</xmax>
      <ymax>{3}</ymax>
    </bndbox>
  </object>
"""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_voc_annotation(xml_path: PathLike, *, filename: str, width: int, height: int, depth: int,
                         objects: Sequence[Dict[str, Any]], folder: str = "VOC2007") -> Path:
    """Write one VOC annotation file (the inverse of :func:`read_voc_annotation`).

    Args:
        xml_path: destination ``Annotations/<id>.xml``.
        filename: the image file name (``<id>.jpg``).
        width, height, depth: image size in pixels and channels.
        objects: dicts with ``name``, ``bbox`` (xmin, ymin, xmax, ymax: VOC 1-based inclusive
            pixels, written as integers when integral), ``difficult``, ``truncated`` (bools) and
            optionally ``pose`` (default ``"Unspecified"``).
        folder: the ``<folder>`` text.

    Returns:
        ``xml_path`` as a Path. The output is byte-identical for equal inputs.
    """
    parts = [_ANNOTATION_HEAD.format(folder=escape(folder), filename=escape(filename), width=int(width),
                                     height=int(height), depth=int(depth))]
    for obj in objects:
        parts.append(_ANNOTATION_OBJECT.format(
            *(_number(v) for v in obj["bbox"]), name=escape(obj["name"]),
            pose=escape(obj.get("pose", "Unspecified")), truncated=int(bool(obj["truncated"])),
            difficult=int(bool(obj["difficult"]))))
    path = Path(xml_path)
    path.write_text("".join(parts) + "</annotation>\n", encoding="utf-8")
    return path


def read_voc_split(root: PathLike, split: str) -> List[str]:
    """The image ids of ``ImageSets/Main/<split>.txt``, in file order.

    Args:
        root: the VOC root (holding Annotations/, ImageSets/, JPEGImages/).
        split: ``trainval``, ``test``, ``train``, ``val``, ...

    Raises:
        FileNotFoundError: if the split file is missing (the message lists the splits present).
        ValueError: if it lists no id or an id twice.
    """
    main = Path(root) / "ImageSets" / "Main"
    path = main / f"{split}.txt"
    if not path.is_file():
        present = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem) if main.is_dir() else []
        raise FileNotFoundError(
            f"VOC split file {path} does not exist; splits present: {present or 'none'} "
            "(root must be the directory holding ImageSets/, e.g. .../VOC2007)"
        )
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{path} lists no image id")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path} lists an image id more than once")
    return ids


def voc_classes(root: Optional[PathLike] = None) -> List[str]:
    """The class names of a VOC root: from ``ImageSets/Main/<class>_<split>.txt`` files, sorted.

    Args:
        root: the VOC root; None returns the 20 PASCAL classes (:data:`VOC_CLASSES`).

    Returns:
        Sorted class names; :data:`VOC_CLASSES` when ``root`` is None or has no per-class files.
    """
    if root is None:
        return list(VOC_CLASSES)
    main = Path(root) / "ImageSets" / "Main"
    splits = {p.stem for p in main.glob("*.txt") if "_" not in p.stem} if main.is_dir() else set()
    names = set()
    for path in main.glob("*_*.txt") if main.is_dir() else ():
        name, _, split = path.stem.rpartition("_")
        if split in splits:
            names.add(name)
    return sorted(names) if names else list(VOC_CLASSES)


def multi_hot_from_objects(objects_per_image: Sequence[Sequence[Dict[str, Any]]],
                           classes: Sequence[str]) -> np.ndarray:
    """VISSL's VOC07 label matrix from per-image object lists.

    Args:
        objects_per_image: N lists of objects with ``name`` and ``difficult``.
        classes: the C class names (column order).

    Returns:
        (N, C) int8: 1 some non-difficult object of the class, 0 only difficult ones, -1 none.
        Objects of other classes are ignored.
    """
    index = {name: c for c, name in enumerate(classes)}
    labels = np.full((len(objects_per_image), len(classes)), -1, dtype=np.int8)
    for i, objects in enumerate(objects_per_image):
        for obj in objects:
            c = index.get(obj["name"])
            if c is not None:
                labels[i, c] = max(labels[i, c], 0 if obj["difficult"] else 1)
    return labels


def voc_multi_hot_labels(root: PathLike, split: str, classes: Sequence[str]) -> np.ndarray:
    """Multi-hot labels of a split, read from its annotations (see :func:`multi_hot_from_objects`).

    Args:
        root: the VOC root.
        split: the image set name.
        classes: the C class names (column order), e.g. :func:`voc_classes`.

    Returns:
        (N, C) int8 in {1, 0, -1}, rows in :func:`read_voc_split` order.

    Raises:
        FileNotFoundError, ValueError: from :func:`read_voc_split` / :func:`read_voc_annotation`.
    """
    ids = read_voc_split(root, split)
    annotations = [read_voc_annotation(Path(root) / "Annotations" / f"{i}.xml") for i in ids]
    return multi_hot_from_objects([a["objects"] for a in annotations], classes)


def voc_boxes_to_xyxy(bboxes: Sequence[Sequence[float]]) -> torch.Tensor:
    """VOC 1-based inclusive (xmin, ymin, xmax, ymax) -> 0-based continuous (x1, y1, x2, y2).

    Returns:
        (M, 4) float32; x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax.
    """
    boxes = torch.as_tensor(np.asarray(bboxes, dtype=np.float32).reshape(-1, 4))
    return boxes - torch.tensor([1.0, 1.0, 0.0, 0.0])


def load_image_tensor(path: PathLike) -> torch.Tensor:
    """An image file as a (3, H, W) uint8 RGB tensor.

    Raises:
        OSError: missing or unreadable file.
    """
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class VOCDetection(torch.utils.data.Dataset):
    """A VOC split as detection samples in torchvision's format.

    Protocol: PASCAL VOC 2007 detection (Everingham et al., IJCV 2010). ``image_id`` is the
    position of the image in the split file, the same id :func:`sslcore.data.coco.voc_to_coco`
    gives it, so detections can be scored with pycocotools.

    Args:
        root: the VOC root (holding Annotations/, ImageSets/, JPEGImages/).
        split: the image set name (``trainval``, ``test``).
        classes: class names; label ``k`` (1-based) is ``classes[k - 1]``, 0 is background.
            Default: :func:`voc_classes` of ``root``. Objects of other classes are left out.
        transforms: optional ``(image, target) -> (image, target)``.

    Raises:
        FileNotFoundError: if the split file is missing.
        ValueError: if ``classes`` is empty or has duplicates.

    Example:
        >>> ds = VOCDetection("scenes/VOC2007", "test")
        >>> image, target = ds[0]
        >>> image.shape, target["boxes"].shape, target["labels"].dtype
        (torch.Size([3, 96, 96]), torch.Size([2, 4]), torch.int64)
    """

    def __init__(self, root: PathLike, split: str, *, classes: Optional[Sequence[str]] = None,
                 transforms: Optional[Callable[[Any, Dict[str, Any]], Tuple[Any, Dict[str, Any]]]] = None
                 ) -> None:
        self.root = Path(root)
        self.split = split
        self.ids = read_voc_split(self.root, split)
        self.classes = list(classes) if classes is not None else voc_classes(self.root)
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be non-empty and distinct, got {self.classes}")
        self._index = {name: k + 1 for k, name in enumerate(self.classes)}
        self.transforms = transforms

    def __len__(self) -> int:
        """N, the number of images in the split."""
        return len(self.ids)

    def annotation(self, idx: int) -> Dict[str, Any]:
        """The parsed annotation of image ``idx`` (:func:`read_voc_annotation`)."""
        return read_voc_annotation(self.root / "Annotations" / f"{self.ids[idx]}.xml")

    def target(self, idx: int) -> Dict[str, Any]:
        """The target of image ``idx`` without loading the image.

        Returns:
            ``{"boxes": (M, 4) float32 0-based x1, y1, x2, y2, "labels": (M,) int64 in 1..C,
            "difficult": (M,) bool, "image_id": int}``.
        """
        return self._target(self.annotation(idx), idx)

    def _target(self, annotation: Dict[str, Any], idx: int) -> Dict[str, Any]:
        objects = [o for o in annotation["objects"] if o["name"] in self._index]
        return {"boxes": voc_boxes_to_xyxy([o["bbox"] for o in objects]),
                "labels": torch.tensor([self._index[o["name"]] for o in objects], dtype=torch.int64),
                "difficult": torch.tensor([o["difficult"] for o in objects], dtype=torch.bool),
                "image_id": int(idx)}

    def __getitem__(self, idx: int) -> Tuple[Any, Dict[str, Any]]:
        """Image ``idx`` as a (3, H, W) uint8 tensor and its :meth:`target`.

        Raises:
            IndexError: if ``idx`` is outside [0, N).
            OSError: if the JPEG is missing or unreadable.
        """
        if not 0 <= idx < len(self.ids):
            raise IndexError(f"image {idx} out of range for a split of {len(self.ids)}")
        annotation = self.annotation(idx)
        image = load_image_tensor(self.root / "JPEGImages" / annotation["filename"])
        target = self._target(annotation, idx)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


__all__ = ["VOCDetection", "VOC_CLASSES", "load_image_tensor", "multi_hot_from_objects",
           "read_voc_annotation", "read_voc_split", "voc_boxes_to_xyxy", "voc_classes",
           "voc_multi_hot_labels", "write_voc_annotation"]
