"""Seeded labelled subsets for low-shot evaluation: k per class, or a fraction of each class.

Protocols: the low-shot VOC07 SVM benchmark samples k positive images per class (Goyal et al.,
"Scaling and Benchmarking Self-Supervised Visual Representation Learning", ICCV 2019,
https://arxiv.org/abs/1905.01235, section 5.1); semi-supervised finetuning uses 1 % and 10 % of
the ImageNet labels, class-balanced (Chen et al., SimCLR, 2020, https://arxiv.org/abs/2002.05709,
section 5.2). :func:`write_subset` stores a subset as a disk_filelist dataset with a
``subset.json`` record (indices, seed, protocol, source digest) so a run can be reproduced.

Labels are either (N,) class ids or (N, C) VISSL VOC multi-hot in {1, 0, -1}; for the latter a
class's members are its positives (1), and the subset is the union over classes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from sslcore.data.seeding import derive_seed

SUBSET_RECORD = "subset.json"
PathLike = Union[str, Path]


def _class_members(labels: np.ndarray) -> Dict[int, np.ndarray]:
    """``{class: sorted member indices}``; for multi-hot the members are the positives."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if labels.ndim == 1:
        return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    if labels.ndim == 2:
        return {c: np.flatnonzero(labels[:, c] == 1) for c in range(labels.shape[1])}
    raise ValueError(f"labels must be (N,) class ids or (N, C) multi-hot, got shape {labels.shape}")


def _draw(members: np.ndarray, count: int, seed: int, cls: int) -> np.ndarray:
    rng = np.random.default_rng(derive_seed(seed, 0x5B5E7, cls))
    return rng.choice(members, size=count, replace=False)


def sample_per_class(labels: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    """``k`` samples of every class, drawn without replacement with ``seed``.

    Each class draws from its own generator (seed, class), so adding a class does not change the
    others' draws.

    Args:
        labels: (N,) int class ids, or (N, C) int multi-hot in {1, 0, -1} (k positives per class;
            an image positive for several classes may be drawn by several, so the union can hold
            fewer than k * C images).
        k: samples per class (>= 1).
        seed: the subset's seed.

    Returns:
        (M,) int64 sorted distinct indices; M = k * C for class ids.

    Raises:
        ValueError: ``k`` < 1, a class with fewer than ``k`` samples (named), or malformed labels.

    Example:
        >>> sample_per_class(np.array([0, 0, 1, 1, 1]), 1, seed=0).shape
        (2,)
    """
    if int(k) < 1:
        raise ValueError(f"k (samples per class) must be >= 1, got {k}")
    chosen = []
    for cls, members in _class_members(labels).items():
        if len(members) < k:
            raise ValueError(f"class {cls} has {len(members)} sample(s), fewer than k={k}; lower k")
        chosen.append(_draw(members, int(k), seed, cls))
    return np.unique(np.concatenate(chosen)).astype(np.int64)


def sample_fraction_per_class(labels: np.ndarray, fraction: float, *, seed: int) -> np.ndarray:
    """``round(fraction * n_c)`` samples of every class c (at least 1), drawn with ``seed``.

    Args:
        labels: (N,) int class ids, or (N, C) multi-hot (the fraction of each class's positives).
        fraction: in (0, 1], e.g. 0.01 or 0.10.
        seed: the subset's seed.

    Returns:
        (M,) int64 sorted distinct indices.

    Raises:
        ValueError: ``fraction`` outside (0, 1], a class without samples (named), malformed labels.

    Example:
        >>> len(sample_fraction_per_class(np.repeat(np.arange(10), 100), 0.1, seed=0))
        100
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}; e.g. 0.01 for 1 % of the labels")
    chosen = []
    for cls, members in _class_members(labels).items():
        if len(members) == 0:
            raise ValueError(f"class {cls} has no positive sample; a fraction of it cannot be drawn")
        count = max(1, int(round(float(fraction) * len(members))))
        chosen.append(_draw(members, count, seed, cls))
    return np.unique(np.concatenate(chosen)).astype(np.int64)


def _digest(paths: List[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def write_subset(data_dir: PathLike, split: str, indices: np.ndarray, out_dir: PathLike, *, seed: int,
                 description: Optional[Dict[str, Any]] = None) -> Path:
    """Write a disk_filelist dataset whose ``split`` is the subset ``indices`` of ``data_dir``'s.

    ``<split>_images.npy`` and ``<split>_labels.npy`` hold the chosen rows (relative image paths
    are rewritten to absolute ones, so the subset directory can live anywhere); every other
    ``*_images.npy`` / ``*_labels.npy`` pair is copied unchanged, its relative paths made absolute
    the same way. ``subset.json`` records the split, indices, seed, ``description`` (e.g.
    ``{"fraction": 0.01}`` or ``{"per_class": 5}``), the per-class counts and the SHA-256 of the
    source split's two files.

    Args:
        data_dir: a disk_filelist dataset (``<split>_images.npy`` + ``<split>_labels.npy``).
        split: the split to subsample (``train``).
        indices: (M,) distinct int row indices into that split.
        out_dir: the subset directory (created).
        seed: the seed the indices were drawn with (recorded).
        description: how the indices were chosen (recorded).

    Returns:
        The path of ``subset.json``.

    Raises:
        FileNotFoundError: the split's files are missing.
        ValueError: indices out of range, duplicated or empty; ``out_dir`` equal to ``data_dir``.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if data_dir.resolve() == out_dir.resolve():
        raise ValueError(f"out_dir {out_dir} is data_dir; write the subset to another directory")
    sources = [data_dir / f"{split}_images.npy", data_dir / f"{split}_labels.npy"]
    for path in sources:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; data_dir must be a disk_filelist dataset "
                                    f"with {split}_images.npy and {split}_labels.npy")
    paths, labels = np.load(sources[0], allow_pickle=False), np.load(sources[1], allow_pickle=False)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or len(indices) == 0 or len(np.unique(indices)) != len(indices):
        raise ValueError("indices must be a non-empty 1-D array of distinct row numbers")
    if indices.min() < 0 or indices.max() >= len(paths):
        raise ValueError(f"indices must lie in [0, {len(paths)}) (rows of {sources[0].name})")
    out_dir.mkdir(parents=True, exist_ok=True)
    for other in sorted(data_dir.glob("*_images.npy")):
        name = other.name[: -len("_images.npy")]
        if name != split and (data_dir / f"{name}_labels.npy").is_file():
            np.save(out_dir / other.name, _absolute(np.load(other, allow_pickle=False), data_dir))
            shutil.copyfile(data_dir / f"{name}_labels.npy", out_dir / f"{name}_labels.npy")
    np.save(out_dir / f"{split}_images.npy", _absolute(paths[indices], data_dir))
    np.save(out_dir / f"{split}_labels.npy", labels[indices])
    counts = {str(c): int(len(m)) for c, m in _class_members(labels[indices]).items()}
    record = {"split": split, "source": str(data_dir.resolve()), "source_sha256": _digest(sources),
              "source_size": int(len(paths)), "seed": int(seed), "description": description or {},
              "num_samples": int(len(indices)), "per_class_counts": counts, "indices": indices.tolist()}
    path = out_dir / SUBSET_RECORD
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _absolute(paths: np.ndarray, base: Path) -> np.ndarray:
    root = base.resolve()
    return np.array([p if Path(p).is_absolute() else str(root / p) for p in paths.tolist()], dtype=str)


__all__ = ["SUBSET_RECORD", "sample_fraction_per_class", "sample_per_class", "write_subset"]
