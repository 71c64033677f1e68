"""Fashion-MNIST scenes: multi-object canvases of real Fashion-MNIST items in the VOC2007 layout.

A small, fully local stand-in for PASCAL VOC07 (Everingham et al., IJCV 2010,
http://host.robots.ox.ac.uk/pascal/VOC/voc2007/) for the benchmarks VISSL runs on VOC: VOC07
linear SVMs on multi-hot labels (Goyal et al., "Scaling and Benchmarking Self-Supervised Visual
Representation Learning", ICCV 2019, https://arxiv.org/abs/1905.01235) and detection finetuning.
Items come from Fashion-MNIST (Xiao et al., 2017, https://arxiv.org/abs/1708.07747): trainval
scenes use the train split, test scenes the test split, so no item is shared between them.

Scene rule (:func:`render_scene`). A black ``canvas_size`` square gets 1..``max_items`` items
(uniform count). Each item is a random image of its split, rescaled to a random side in
``SCALE_RANGE`` pixels (bilinear), pixels below ``PIXEL_THRESHOLD`` set to 0, and cropped to its
non-zero pixels; it is placed fully inside the canvas (``truncated`` is always 0) where its box
overlaps every earlier box by at most ``MAX_BOX_OVERLAP`` of the smaller box's area (up to
``MAX_TRIES`` random positions per item; an item that fits nowhere is left out, so a scene may
hold fewer items than drawn, never none: the first item always fits). Items are composited
with a pixel-wise maximum, so no item hides another's pixels and the canvas' non-zero pixels are
exactly the union of the items'. Each box is tight around its item's non-zero pixels as placed.
An item is ``difficult`` when more than ``DIFFICULT_SHARED`` of its non-zero pixels are also
non-zero pixels of another item (heavily blended). Canvases are gray, saved as RGB JPEG.

Every scene draws from its own generator seeded by (seed, split, index), so a build is
byte-identical for equal arguments. Output (``out_dir``)::

    VOC2007/Annotations/<id>.xml, VOC2007/JPEGImages/<id>.jpg
    VOC2007/ImageSets/Main/{trainval,test}.txt, <class>_{trainval,test}.txt
    train_images.npy, train_labels.npy   disk_filelist view of trainval (relative paths;
    test_images.npy,  test_labels.npy    (N, 10) int8 labels: 1 present, 0 difficult only, -1 absent)
    dataset.json, dataset_files.tsv      manifest (sslcore.data.manifest)

Feature extraction on the scenes (the builder registers the catalog name
``fashion_mnist_scenes_filelist``; images are 96 px RGB, no resize needed)::

    sslcore extract config=feature_extraction/extract_resnet_fashion_mnist \\
        config.DATA.TRAIN.DATASET_NAMES=[fashion_mnist_scenes_filelist] \\
        config.DATA.TEST.DATASET_NAMES=[fashion_mnist_scenes_filelist] config.MACHINE.DEVICE=cpu

or, without the catalog, ``config.DATA.TRAIN.DATASET_NAMES=[]
config.DATA.TRAIN.DATA_PATHS=[DIR/train_images.npy] config.DATA.TRAIN.LABEL_PATHS=[DIR/train_labels.npy]``
(and the same for TEST with ``test_*``). The targets written are (N, 10) multi-hot.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from sslcore.data.fashion_mnist import DEFAULT_SOURCE_DIR, SPLIT_FILES, load_fashion_mnist
from sslcore.data.manifest import (
    LISTING_NAME,
    MANIFEST_NAME,
    build_manifest,
    list_files,
    read_manifest,
    verify_dataset,
    write_manifest,
)
from sslcore.data.seeding import derive_seed
from sslcore.data.voc import multi_hot_from_objects, write_voc_annotation

log = logging.getLogger(__name__)

# VOC-safe slugs of the 10 Fashion-MNIST classes, in Fashion-MNIST id order
SCENE_CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat",
                 "sandal", "shirt", "sneaker", "bag", "ankle_boot")
SCALE_RANGE = (28, 56)  # item side in pixels before cropping, inclusive
PIXEL_THRESHOLD = 16  # item pixels below this become background (0)
MAX_BOX_OVERLAP = 0.3  # intersection / smaller box area, between any two boxes
DIFFICULT_SHARED = 0.25  # share of an item's pixels blended with another item -> difficult
MAX_TRIES = 20  # positions tried per item
JPEG_QUALITY = 95
VOC_DIR = "VOC2007"
CATALOG_NAME = "fashion_mnist_scenes_filelist"
# scene split -> (Fashion-MNIST split, seed code, disk_filelist split name)
SCENE_SPLITS = {"trainval": ("train", 1, "train"), "test": ("test", 2, "test")}
_CONTENT_VERSION = 1


def _prepare_item(image: np.ndarray, side: int) -> Optional[np.ndarray]:
    """Rescale a 28x28 item to ``side`` px, zero pixels below the threshold, crop to the rest."""
    if side != image.shape[0]:
        resized = Image.fromarray(image).resize((side, side), Image.BILINEAR)
        image = np.frombuffer(resized.tobytes(), dtype=np.uint8).reshape(side, side)
    item = np.where(image >= PIXEL_THRESHOLD, image, 0).astype(np.uint8)
    rows, cols = np.flatnonzero(item.any(axis=1)), np.flatnonzero(item.any(axis=0))
    if len(rows) == 0:
        return None
    return item[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]


def _box_overlap(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> float:
    """Intersection over the smaller area of two half-open (x0, y0, x1, y1) boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def _find_position(shape: Tuple[int, int], placed: Sequence[Dict[str, Any]], canvas_size: int,
                   rng: np.random.Generator) -> Optional[Tuple[int, int]]:
    """A random top-left (y, x) where an item of ``shape`` overlaps every placed box by at most
    MAX_BOX_OVERLAP, trying MAX_TRIES positions; None if none fits."""
    h, w = shape
    for _ in range(MAX_TRIES):
        y, x = int(rng.integers(0, canvas_size - h + 1)), int(rng.integers(0, canvas_size - w + 1))
        if all(_box_overlap((x, y, x + w, y + h), other["_box"]) <= MAX_BOX_OVERLAP for other in placed):
            return y, x
    return None


def render_scene(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *,
                 canvas_size: int = 96, max_items: int = 4) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Compose one scene (the rule is in the module docstring), before any JPEG encoding.

    Args:
        images: (N, 28, 28) uint8 Fashion-MNIST items.
        labels: (N,) int class ids in 0..9.
        rng: the scene's generator (all randomness comes from it).
        canvas_size: side of the square canvas in pixels (>= SCALE_RANGE[1]).
        max_items: most items per scene (>= 1).

    Returns:
        ``(canvas, objects)``: canvas (canvas_size, canvas_size) uint8; objects in placement
        order, each ``{"name": class slug, "label": int, "bbox": (xmin, ymin, xmax, ymax) VOC
        1-based inclusive ints, "difficult": bool, "truncated": False, "mask": (H, W) bool of
        the item's non-zero pixels as placed, "source_index": int}``. 1 <= len(objects) <= max_items.
    """
    canvas = np.zeros((canvas_size, canvas_size), dtype=np.uint8)
    wanted = int(rng.integers(1, max_items + 1))
    placed: List[Dict[str, Any]] = []
    while len(placed) < wanted:
        source = int(rng.integers(len(images)))
        item = _prepare_item(images[source], int(rng.integers(SCALE_RANGE[0], SCALE_RANGE[1] + 1)))
        if item is None:  # no pixel above the threshold: draw another item
            continue
        position = _find_position(item.shape, placed, canvas_size, rng)
        if position is None:  # fits nowhere: the scene keeps fewer items
            wanted -= 1
            continue
        y, x = position
        h, w = item.shape
        mask = np.zeros_like(canvas, dtype=bool)
        mask[y: y + h, x: x + w] = item > 0
        np.maximum(canvas[y: y + h, x: x + w], item, out=canvas[y: y + h, x: x + w])
        label = int(labels[source])
        placed.append({"name": SCENE_CLASSES[label], "label": label, "bbox": (x + 1, y + 1, x + w, y + h),
                       "difficult": False, "truncated": False, "mask": mask, "source_index": source,
                       "_box": (x, y, x + w, y + h)})
    for obj in placed:
        touching = [o for o in placed if o is not obj and _box_overlap(obj["_box"], o["_box"]) > 0]
        if touching:
            shared = (obj["mask"] & np.logical_or.reduce([o["mask"] for o in touching])).sum()
            obj["difficult"] = bool(shared > DIFFICULT_SHARED * obj["mask"].sum())
    for obj in placed:
        del obj["_box"]
    return canvas, placed


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of ``split`` (``trainval`` or ``test``)."""
    return np.random.default_rng(derive_seed(seed, SCENE_SPLITS[split][1], index))


_SOURCE: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}  # split -> (images, labels), for forked workers


def _write_scene_range(voc: Path, split: str, ids: Sequence[str], start: int, seed: int, canvas_size: int,
                       max_items: int) -> List[List[Dict[str, Any]]]:
    """Render and save (JPEG + XML) scenes ``start .. start + len(ids) - 1``; return their objects."""
    images, labels = _SOURCE[split]
    objects_per_image = []
    for index, image_id in enumerate(ids, start=start):
        canvas, objects = render_scene(images, labels, scene_rng(seed, split, index),
                                       canvas_size=canvas_size, max_items=max_items)
        Image.fromarray(canvas).convert("RGB").save(voc / "JPEGImages" / f"{image_id}.jpg", format="JPEG",
                                                    quality=JPEG_QUALITY)
        kept = [{k: v for k, v in o.items() if k not in ("mask", "label", "source_index")} for o in objects]
        write_voc_annotation(voc / "Annotations" / f"{image_id}.xml", filename=f"{image_id}.jpg",
                             width=canvas_size, height=canvas_size, depth=3, objects=kept)
        objects_per_image.append(kept)
    return objects_per_image


def _write_scenes(voc: Path, split: str, ids: Sequence[str], images: np.ndarray, labels: np.ndarray,
                  seed: int, canvas_size: int, max_items: int) -> List[List[Dict[str, Any]]]:
    """All scenes of one split; chunks go to one forked process per core (scenes are seeded one
    by one, so the output does not depend on the number of processes)."""
    _SOURCE[split] = (images, labels)
    try:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = max(1, min(cores, len(ids) // 500))
        args = (seed, canvas_size, max_items)
        if workers == 1 or "fork" not in multiprocessing.get_all_start_methods():
            return _write_scene_range(voc, split, ids, 0, *args)
        bounds = np.linspace(0, len(ids), 4 * workers + 1).astype(int)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(_write_scene_range, voc, split, ids[a:b], int(a), *args)
                       for a, b in zip(bounds[:-1], bounds[1:])]
            return [objects for future in futures for objects in future.result()]
    finally:
        _SOURCE.pop(split, None)


def _write_image_sets(voc: Path, split: str, ids: Sequence[str], multi_hot: np.ndarray) -> None:
    """``<split>.txt`` and ``<class>_<split>.txt`` (``"<id> <flag>"``, flag 1 / -1 / 0)."""
    main = voc / "ImageSets" / "Main"
    (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    for c, name in enumerate(SCENE_CLASSES):
        lines = "".join(f"{i} {int(flag):2d}\n" for i, flag in zip(ids, multi_hot[:, c]))
        (main / f"{name}_{split}.txt").write_text(lines)


def _content(source_dir: Path, params: Dict[str, int]) -> Dict[str, Any]:
    sizes = {name: (source_dir / name).stat().st_size
             for files in SPLIT_FILES.values() for name in files[:2] if (source_dir / name).is_file()}
    return {"source": "fashion_mnist_scenes", "version": _CONTENT_VERSION, "source_files": sizes,
            "params": params}


def _is_prepared(out_dir: Path, content: Dict[str, Any]) -> bool:
    if not (out_dir / MANIFEST_NAME).is_file():
        return False
    try:
        if read_manifest(out_dir).get("content") != content:
            return False
        verify_dataset(out_dir)
    except (ValueError, FileNotFoundError) as exc:
        log.info("building the scenes in %s again: %s", out_dir, exc)
        return False
    return True


def _check_args(num_trainval: int, num_test: int, canvas_size: int, max_items: int) -> None:
    for name, value in (("num_trainval", num_trainval), ("num_test", num_test), ("max_items", max_items)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not SCALE_RANGE[1] <= canvas_size <= 1024:
        raise ValueError(f"canvas_size must be in [{SCALE_RANGE[1]}, 1024] px (items are up to "
                         f"{SCALE_RANGE[1]} px), got {canvas_size}; 96 to 128 is the intended range")


def build_fashion_mnist_scenes(out_dir: Union[str, Path], *, num_trainval: int = 5000, num_test: int = 5000,
                               canvas_size: int = 96, max_items: int = 4, seed: int = 0,
                               source_dir: Union[str, Path] = DEFAULT_SOURCE_DIR,
                               register_catalog: bool = True) -> Dict[str, Any]:
    """Build the Fashion-MNIST scenes in VOC2007 layout plus a disk_filelist view (module docstring).

    Idempotent: an ``out_dir`` whose manifest records the same parameters and source files and
    that verifies is left alone. Otherwise ``VOC2007/``, the ``.npy`` files and the manifest are
    written again; other files in ``out_dir`` are kept.

    Args:
        out_dir: destination directory (created).
        num_trainval: scenes in ``trainval`` (ids ``000000`` ...), items from the train split.
        num_test: scenes in ``test`` (ids continue after trainval), items from the test split.
        canvas_size: canvas side in pixels (96-128 intended; >= 56).
        max_items: most items per scene.
        seed: the build's seed; equal seeds give byte-identical files.
        source_dir: the Fashion-MNIST IDX directory.
        register_catalog: record ``fashion_mnist_scenes_filelist`` (train = trainval, val = test)
            in the user dataset catalog.

    Returns:
        The manifest (as written to ``out_dir/dataset.json``), with ``classes`` = SCENE_CLASSES
        and ``content.voc_splits`` = image counts per VOC split.

    Raises:
        ValueError: a bad count, ``canvas_size`` or ``max_items``.
        FileNotFoundError: Fashion-MNIST is missing (fix: ``apt-get install dataset-fashion-mnist``).

    Example:
        >>> manifest = build_fashion_mnist_scenes("runs/data/scenes", num_trainval=200, num_test=200)
        >>> manifest["content"]["voc_splits"]
        {'trainval': 200, 'test': 200}
    """
    _check_args(num_trainval, num_test, canvas_size, max_items)
    out_dir, source_dir = Path(out_dir), Path(source_dir)
    counts = {"trainval": int(num_trainval), "test": int(num_test)}
    params = {"num_trainval": counts["trainval"], "num_test": counts["test"], "canvas_size": int(canvas_size),
              "max_items": int(max_items), "seed": int(seed)}
    content = {**_content(source_dir, params), "voc_splits": counts}
    if not _is_prepared(out_dir, content):
        start = time.perf_counter()
        raw = {split: load_fashion_mnist(source_dir, split) for split in SPLIT_FILES}  # fail before deleting
        _clear_outputs(out_dir)
        voc = out_dir / VOC_DIR
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (voc / sub).mkdir(parents=True, exist_ok=True)
        first = 0
        for split, (fmnist_split, _, filelist_split) in SCENE_SPLITS.items():
            ids = [f"{first + i:06d}" for i in range(counts[split])]
            first += counts[split]
            objects = _write_scenes(voc, split, ids, *raw[fmnist_split], int(seed), int(canvas_size),
                                    int(max_items))
            multi_hot = multi_hot_from_objects(objects, SCENE_CLASSES)
            _write_image_sets(voc, split, ids, multi_hot)
            np.save(out_dir / f"{filelist_split}_images.npy",
                    np.array([f"{VOC_DIR}/JPEGImages/{i}.jpg" for i in ids], dtype=str))
            np.save(out_dir / f"{filelist_split}_labels.npy", multi_hot)
        files = list_files(out_dir)
        manifest = build_manifest(out_dir, name="fashion_mnist_scenes", content=content,
                                  classes=list(SCENE_CLASSES), files=files)
        manifest["layouts"] = ["voc2007", "disk_filelist"]
        write_manifest(out_dir, manifest, files)
        log.info("built %d + %d Fashion-MNIST scenes in %s (%.1f s)", counts["trainval"], counts["test"],
                 out_dir, time.perf_counter() - start)
    if register_catalog:
        from sslcore.data.catalog import register_dataset

        root = out_dir.resolve()
        register_dataset(CATALOG_NAME, train=[str(root / "train_images.npy"), str(root / "train_labels.npy")],
                         val=[str(root / "test_images.npy"), str(root / "test_labels.npy")])
    return verify_dataset(out_dir)


def _clear_outputs(out_dir: Path) -> None:
    shutil.rmtree(out_dir / VOC_DIR, ignore_errors=True)
    for split in ("train", "test"):
        for suffix in ("_images.npy", "_labels.npy"):
            (out_dir / f"{split}{suffix}").unlink(missing_ok=True)
    for name in (MANIFEST_NAME, LISTING_NAME):
        (out_dir / name).unlink(missing_ok=True)


def prepare_fashion_mnist_scenes(out_dir: Union[str, Path], *, limit_train: Optional[int] = None,
                                 limit_test: Optional[int] = None, **kwargs: Any) -> Path:
    """The ``fashion_mnist_scenes`` built-in dataset (``sslcore data prepare``): scene counts
    ``limit_train`` (trainval, default 5000) and ``limit_test`` (test, default 5000); other
    keyword arguments go to :func:`build_fashion_mnist_scenes`.

    Returns:
        ``out_dir`` as a Path.
    """
    build_fashion_mnist_scenes(out_dir, num_trainval=5000 if limit_train is None else limit_train,
                               num_test=5000 if limit_test is None else limit_test, **kwargs)
    return Path(out_dir)


__all__ = ["CATALOG_NAME", "SCENE_CLASSES", "build_fashion_mnist_scenes", "prepare_fashion_mnist_scenes",
           "render_scene", "scene_rng"]
