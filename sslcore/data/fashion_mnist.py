"""Fashion-MNIST, prepared from the Debian package's IDX files into both VISSL layouts.

Data set: Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", 2017, https://arxiv.org/abs/1708.07747 — 70,000 28x28 grayscale images of
10 clothing classes, 60,000 train / 10,000 test. On this platform it comes from the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/*.gz``).

Output directory (both layouts side by side, paths inside relative so it can be copied)::

    train/<class>/<index:05d>.png        disk_folder (index = position in the IDX file)
    test/<class>/<index:05d>.png
    train_images.npy, train_labels.npy   disk_filelist (relative paths, int64 labels)
    test_images.npy,  test_labels.npy
    dataset.json, dataset_files.tsv      manifest (see sslcore.data.manifest)

Label ids: both layouts keep the original Fashion-MNIST ids (0 = T-shirt/top ... 9 = Ankle boot).
The class folders are named ``<id>_<name>`` (``0_T-shirt_top``, ``1_Trouser``, ..., ``9_Ankle_boot``)
so that the disk_folder rule (id = position of the class folder in sorted order, as in VISSL and
torchvision's ``ImageFolder``) gives those same ids; the ``.npy`` label files hold them directly.
The manifest lists ``classes`` (the folder names) in id order.

PNG files are written by Pillow, with a process pool over chunks of images.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from sslcore.data.idx import read_idx
from sslcore.data.manifest import (
    LISTING_NAME,
    MANIFEST_NAME,
    build_manifest,
    list_files,
    read_manifest,
    verify_dataset,
    write_manifest,
)

log = logging.getLogger(__name__)

DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
# class names in the original Fashion-MNIST id order ("/" and " " replaced to be folder names)
FASHION_MNIST_CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")
# class folder names, in id order; sorted by name they keep that order (the disk_folder rule)
CLASSES = tuple(f"{i}_{name}" for i, name in enumerate(FASHION_MNIST_CLASSES))
# what this module writes; a change makes earlier prepared directories be prepared again
_CONTENT_VERSION = 2
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
CATALOG_NAMES = ("fashion_mnist_folder", "fashion_mnist_filelist")


def load_fashion_mnist(source_dir: Union[str, Path], split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Read one split from the IDX files.

    Args:
        source_dir: the directory holding the four ``*-idx?-ubyte.gz`` files.
        split: ``"train"`` or ``"test"``.

    Returns:
        images (N, 28, 28) uint8 and labels (N,) int64 with the ORIGINAL Fashion-MNIST ids
        (0 = T-shirt_top ... 9 = Ankle_boot); N = 60,000 or 10,000.

    Raises:
        FileNotFoundError: if a file is missing (fix: ``apt-get install dataset-fashion-mnist``).
        ValueError: if ``split`` is unknown or a file is corrupt or has the wrong size.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"Fashion-MNIST split must be one of {list(SPLIT_FILES)}, got {split!r}")
    image_file, label_file, count = SPLIT_FILES[split]
    paths = [Path(source_dir) / image_file, Path(source_dir) / label_file]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST file {path} not found. Install the Debian package with "
                "'sudo apt-get install dataset-fashion-mnist' (or pass source_dir=<dir with the IDX files>)"
            )
    images = read_idx(paths[0], expect_shape=(count, 28, 28)).astype(np.uint8)
    labels = read_idx(paths[1], expect_shape=(count,)).astype(np.int64)
    if labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{paths[1]}: labels outside 0..9; the file is corrupt, reinstall the package")
    return images, labels


def select_stratified(labels: np.ndarray, limit: Optional[int]) -> np.ndarray:
    """Deterministic class-stratified subset: the FIRST samples of each class in file order.

    Each class gets ``limit // C`` samples; the remainder goes one each to the lowest class ids.
    No randomness, so the same ``limit`` always selects the same files.

    Args:
        labels: (N,) int64 class ids in [0, C).
        limit: subset size; None or >= N keeps everything.

    Returns:
        (M,) int64 sorted indices into ``labels``, M = min(limit, N).

    Raises:
        ValueError: if ``limit`` < 1, or a class has fewer samples than its share.
    """
    if limit is None or limit >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    if limit < 1:
        raise ValueError(f"limit must be >= 1 or None (all samples), got {limit}")
    classes = np.unique(labels)
    quota = np.full(len(classes), limit // len(classes))
    quota[: limit % len(classes)] += 1
    chosen = []
    for cls, take in zip(classes, quota):
        members = np.flatnonzero(labels == cls)
        if len(members) < take:
            raise ValueError(
                f"class {cls} has {len(members)} samples, fewer than its share {take}; lower the limit"
            )
        chosen.append(members[:take])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _content(source_dir: Path, limits: Dict[str, Optional[int]]) -> Dict[str, object]:
    sizes = {name: (source_dir / name).stat().st_size
             for files in SPLIT_FILES.values() for name in files[:2] if (source_dir / name).is_file()}
    return {"source": "fashion_mnist", "version": _CONTENT_VERSION, "source_files": sizes,
            "limits": limits, "label_order": "fashion_mnist_ids"}


def _is_prepared(out_dir: Path, content: Dict[str, object]) -> bool:
    """Whether out_dir holds this content, verified. Without the raw files (a later pipeline stage
    without the Debian package) a verified directory with the same limits counts as prepared."""
    if not (out_dir / MANIFEST_NAME).is_file():
        return False
    try:
        recorded = dict(read_manifest(out_dir).get("content") or {})
        expected = dict(content)
        if not expected["source_files"]:
            recorded.pop("source_files", None)
            expected.pop("source_files")
        if recorded != expected:
            return False
        verify_dataset(out_dir)
    except (ValueError, FileNotFoundError) as exc:
        log.info("re-preparing %s: %s", out_dir, exc)
        return False
    return True


def _write_png_chunk(images: np.ndarray, paths: Sequence[str]) -> None:
    for image, path in zip(images, paths):
        # a 2-D uint8 array gives mode "L" (passing mode= warns on Pillow 11.3)
        Image.fromarray(image).save(path, format="PNG", compress_level=1)


def _write_pngs(images: np.ndarray, paths: Sequence[str]) -> None:
    """Write ``images[i]`` (N, 28, 28) uint8 to ``paths[i]`` as 8-bit grayscale PNG with Pillow.

    Lossless: decoding gives the exact pixels back. For such small images the cost is per file,
    so chunks of images are written by one forked process per available CPU core.
    """
    if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(paths):
        raise ValueError(f"expected (N, H, W) uint8 images and N paths, got {images.dtype} "
                         f"{images.shape} and {len(paths)} paths")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(cores, len(paths) // 1000))
    if workers == 1:
        _write_png_chunk(images, paths)
        return
    bounds = np.linspace(0, len(paths), 4 * workers + 1).astype(int)  # a few chunks per worker
    # fork: workers inherit the imported modules instead of importing sslcore (and torch) again
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(_write_png_chunk, images[a:b], paths[a:b])
                   for a, b in zip(bounds[:-1], bounds[1:])]
        for future in futures:
            future.result()  # re-raises a worker's error (disk full, missing directory)


def _write_split(out_dir: Path, split: str, images: np.ndarray, labels: np.ndarray,
                 indices: np.ndarray) -> None:
    kept = labels[indices]
    rel = [f"{split}/{CLASSES[c]}/{i:05d}.png" for c, i in zip(kept, indices)]
    for name in CLASSES:
        (out_dir / split / name).mkdir(parents=True, exist_ok=True)
    base = str(out_dir)
    _write_pngs(images[indices], [f"{base}/{r}" for r in rel])
    np.save(out_dir / f"{split}_images.npy", np.array(rel, dtype=str))
    np.save(out_dir / f"{split}_labels.npy", kept.astype(np.int64))


def _clear_outputs(out_dir: Path) -> None:
    for split in SPLIT_FILES:
        shutil.rmtree(out_dir / split, ignore_errors=True)
        for suffix in ("_images.npy", "_labels.npy"):
            (out_dir / f"{split}{suffix}").unlink(missing_ok=True)
    for name in (MANIFEST_NAME, LISTING_NAME):
        (out_dir / name).unlink(missing_ok=True)


def prepare_fashion_mnist(out_dir: Union[str, Path], *, source_dir: Union[str, Path] = DEFAULT_SOURCE_DIR,
                          limit_train: Optional[int] = None, limit_test: Optional[int] = None,
                          register_catalog: bool = True) -> Path:
    """Write Fashion-MNIST as PNG files in disk_folder AND disk_filelist layout, plus a manifest.

    Labels keep the original Fashion-MNIST ids in both layouts: class folders ``0_T-shirt_top``
    ... ``9_Ankle_boot`` (sorted = id order) and the same ids in ``<split>_labels.npy``.

    Idempotent: when ``out_dir/dataset.json`` records the same content (this module's version,
    label order, source files and limits) and :func:`~sslcore.data.manifest.verify_dataset`
    passes, nothing is written. Otherwise (a directory from an earlier version included) the
    outputs this function owns (``train/``, ``test/``, ``*_images.npy``, ``*_labels.npy``, the
    manifest) are removed and written again; other files in ``out_dir`` are left alone.

    With ``register_catalog`` the user dataset catalog (``$SSLCORE_DATASET_CATALOG`` or
    ``~/.sslcore/dataset_catalog.json``) gets ``fashion_mnist_folder`` (split directories) and
    ``fashion_mnist_filelist`` (the .npy files), with ``val`` = the test split.

    Args:
        out_dir: destination directory (created).
        source_dir: the directory with the four IDX ``.gz`` files.
        limit_train: keep a class-stratified subset of this many train images
            (see :func:`select_stratified`: the first images of each class); None keeps 60,000.
        limit_test: the same for the test split (None keeps 10,000).
        register_catalog: whether to record the two catalog entries.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        FileNotFoundError: if the IDX files are missing (fix: ``apt-get install dataset-fashion-mnist``).
        ValueError: if an IDX file is corrupt or a limit is invalid.

    Example:
        >>> root = prepare_fashion_mnist("runs/data/fmnist", limit_train=200, limit_test=100)
        >>> sorted(p.name for p in (root / "train").iterdir())[:2]
        ['0_T-shirt_top', '1_Trouser']
    """
    out_dir, source_dir = Path(out_dir), Path(source_dir)
    limits = {"train": limit_train, "test": limit_test}
    content = _content(source_dir, limits)
    if not _is_prepared(out_dir, content):
        start = time.perf_counter()
        out_dir.mkdir(parents=True, exist_ok=True)
        raw = {split: load_fashion_mnist(source_dir, split) for split in SPLIT_FILES}  # fail before deleting
        chosen = {split: select_stratified(raw[split][1], limits[split]) for split in SPLIT_FILES}
        _clear_outputs(out_dir)
        for split, (images, labels) in raw.items():
            _write_split(out_dir, split, images, labels, chosen[split])
        files = list_files(out_dir)
        manifest = build_manifest(out_dir, name="fashion_mnist", content=content,
                                  classes=list(CLASSES), files=files)
        write_manifest(out_dir, manifest, files)
        log.info("prepared Fashion-MNIST in %s (%d files, %.1f s)", out_dir, len(files),
                 time.perf_counter() - start)
    if register_catalog:
        _register(out_dir)
    return out_dir


def _register(out_dir: Path) -> None:
    from sslcore.data.catalog import register_dataset

    root = out_dir.resolve()
    register_dataset(CATALOG_NAMES[0], train=[str(root / "train"), str(root / "train")],
                     val=[str(root / "test"), str(root / "test")])
    register_dataset(CATALOG_NAMES[1],
                     train=[str(root / "train_images.npy"), str(root / "train_labels.npy")],
                     val=[str(root / "test_images.npy"), str(root / "test_labels.npy")])
