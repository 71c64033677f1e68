"""The features artifact: extracted features, targets and sample indices as ``.npy`` files.

Every benchmark that works on frozen features (kNN, linear, SVM, low-shot, retrieval) reads this
format, and feature extraction writes it (design.md section 5). One directory holds, per split
(``"train"``, ``"test"``) and per trunk layer (``"res5avg"``, ``"conv1"``, ``"heads"``, ...)::

    <split>_<layer>_features.npy   float32, (N, D)  one row per sample
    <split>_<layer>_targets.npy    int64,   (N,)    class index; (N, C) multi-hot for multi-label sets
    <split>_<layer>_inds.npy       int64,   (N,)    the sample's index in the dataset split

Rows of the three files are aligned: row ``i`` of each describes the same image. Files are plain
NumPy arrays (``allow_pickle=False``), readable from any language with an ``.npy`` reader.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
_KINDS = ("features", "targets", "inds")
_SUFFIX = "_features.npy"

PathLike = Union[str, os.PathLike]


def feature_paths(features_dir: PathLike, split: str, layer: str) -> Dict[str, Path]:
    """Paths of the three files of one split and layer.

    Args:
        features_dir: the features directory.
        split: ``"train"`` or ``"test"``.
        layer: the trunk layer name, e.g. ``"res5avg"``.

    Returns:
        ``{"features": Path, "targets": Path, "inds": Path}`` (the files need not exist).

    Raises:
        ValueError: if ``split`` is not one of :data:`SPLITS` or ``layer`` is not a plain name.
    """
    _check_split(split)
    if not layer or any(sep in layer for sep in ("/", "\\", os.sep)) or layer.startswith("."):
        raise ValueError(
            f"layer name {layer!r} is not a plain file-name part; use a trunk layer name such as "
            "'res5avg' or 'conv1'"
        )
    root = Path(features_dir)
    return {kind: root / f"{split}_{layer}_{kind}.npy" for kind in _KINDS}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not supported; use one of {list(SPLITS)}")


def _as_features(features: np.ndarray) -> np.ndarray:
    array = np.asarray(features)
    if array.ndim != 2:
        raise ValueError(
            f"features must be a 2-D array (N samples, D dims), got shape {array.shape}; "
            "flatten pooled maps first, e.g. features.reshape(len(features), -1)"
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"features must be real numbers, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"features hold NaN or inf in {bad.size} of {len(array)} rows (first rows: "
            f"{bad[:5].tolist()}); the model probably diverged: check the training loss"
        )
    return array


def _as_index_array(values: np.ndarray, what: str, num_rows: int, allow_2d: bool) -> np.ndarray:
    array = np.asarray(values)
    if allow_2d and array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]  # VISSL stores single-label targets as (N, 1)
    if array.ndim not in ((1, 2) if allow_2d else (1,)):
        shape = "(N,) or (N, C)" if allow_2d else "(N,)"
        raise ValueError(f"{what} must have shape {shape}, got {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"{what} must be integers, got dtype {array.dtype}; cast with .astype(np.int64)")
    if len(array) != num_rows:
        raise ValueError(f"{what} has {len(array)} rows but features have {num_rows}; rows must align")
    return array.astype(np.int64, copy=False)


def _check_unique(inds: np.ndarray) -> None:
    unique = np.unique(inds)
    if unique.size != inds.size:
        raise ValueError(
            f"inds holds {inds.size - unique.size} duplicate sample indices; keep the first row per "
            "index (DistributedSampler pads the last batch with repeated samples)"
        )


def save_features(
    out_dir: PathLike,
    split: str,
    layer: str,
    features: np.ndarray,
    targets: np.ndarray,
    inds: np.ndarray,
) -> Dict[str, Path]:
    """Write one split and layer of the features artifact, atomically per file.

    Each array goes to a temporary file in ``out_dir`` that is then renamed over the final name
    (``os.replace``). The features file is renamed last, so a reader that finds
    ``<split>_<layer>_features.npy`` (see :func:`list_layers`) also finds its targets and inds.

    Args:
        out_dir: the features directory; created if missing.
        split: ``"train"`` or ``"test"``.
        layer: trunk layer name, e.g. ``"res5avg"``.
        features: (N, D) real array; stored as float32.
        targets: (N,) integer class indices, or (N, C) integer multi-hot labels; (N, 1) is
            stored as (N,). Stored as int64.
        inds: (N,) integer, distinct dataset indices of the rows. Stored as int64.

    Returns:
        ``{"features": Path, "targets": Path, "inds": Path}`` of the written files.

    Raises:
        ValueError: bad split or layer name; wrong rank, dtype or row count; NaN or inf in
            ``features``; duplicate ``inds``.

    Example:
        >>> save_features("feats", "train", "res5avg", np.zeros((4, 8)), np.arange(4), np.arange(4))
    """
    paths = feature_paths(out_dir, split, layer)
    feats = _as_features(features)
    arrays = {
        "features": feats,
        "targets": _as_index_array(targets, "targets", len(feats), allow_2d=True),
        "inds": _as_index_array(inds, "inds", len(feats), allow_2d=False),
    }
    _check_unique(arrays["inds"])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    temps = {kind: _write_temp(paths[kind].parent, arrays[kind]) for kind in _KINDS}
    for kind in ("inds", "targets", "features"):
        os.replace(temps[kind], paths[kind])
    log.info("saved %s/%s features %s to %s", split, layer, feats.shape, Path(out_dir))
    return paths


def _write_temp(directory: Path, array: np.ndarray) -> Path:
    handle, name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(handle, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        os.chmod(name, 0o644)  # mkstemp creates 0600; features are read by other stages
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def list_layers(features_dir: PathLike, split: str) -> List[str]:
    """Layers that have a features file for ``split`` in ``features_dir``, sorted.

    Args:
        features_dir: the features directory.
        split: ``"train"`` or ``"test"``.

    Returns:
        Layer names; empty if the directory does not exist or holds none.

    Raises:
        ValueError: if ``split`` is not one of :data:`SPLITS`.
    """
    _check_split(split)
    root = Path(features_dir)
    if not root.is_dir():
        return []
    prefix = f"{split}_"
    names = [p.name for p in root.iterdir() if p.is_file()]
    return sorted(
        n[len(prefix):-len(_SUFFIX)] for n in names
        if n.startswith(prefix) and n.endswith(_SUFFIX) and len(n) > len(prefix) + len(_SUFFIX)
    )


def _missing_message(features_dir: Path, split: str, layer: str, missing: Path) -> str:
    present = {s: list_layers(features_dir, s) for s in SPLITS}
    listing = "; ".join(f"{s}: {', '.join(v) or 'none'}" for s, v in present.items())
    return (
        f"no file {missing.name} in {features_dir} for split '{split}', layer '{layer}'. "
        f"Layers present per split: {listing}. Extract features of that layer and split first, "
        "or pick a present layer"
    )


def load_features(
    features_dir: PathLike,
    split: str,
    layer: str,
    *,
    mmap_mode: Optional[str] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one split and layer of the features artifact written by :func:`save_features`.

    Args:
        features_dir: the features directory.
        split: ``"train"`` or ``"test"``.
        layer: trunk layer name, e.g. ``"res5avg"``.
        mmap_mode: ``None`` reads the features into memory; ``"r"`` memory-maps a float32
            features file (for train splits larger than memory).

    Returns:
        ``(features, targets, inds)``: float32 (N, D); int64 (N,) or (N, C); int64 (N,).
        Targets stored as (N, 1) (VISSL's layout) are returned as (N,).

    Raises:
        FileNotFoundError: the directory or a file is missing; the message lists the layers
            present per split.
        ValueError: a file has the wrong rank or dtype, or the row counts differ.
    """
    paths = feature_paths(features_dir, split, layer)
    root = Path(features_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"features directory {root} does not exist; run feature extraction first or fix the path"
        )
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(_missing_message(root, split, layer, path))
    raw = np.load(paths["features"], mmap_mode=mmap_mode, allow_pickle=False)
    if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.floating):
        raise ValueError(
            f"{paths['features']}: expected float (N, D) features, got {raw.dtype} {raw.shape}; "
            "re-extract the features"
        )
    features = raw if raw.dtype == np.float32 else raw.astype(np.float32)
    try:
        targets = _as_index_array(np.load(paths["targets"], allow_pickle=False), "targets",
                                  len(features), allow_2d=True)
        inds = _as_index_array(np.load(paths["inds"], allow_pickle=False), "inds",
                               len(features), allow_2d=False)
    except ValueError as exc:
        raise ValueError(f"{root}, split '{split}', layer '{layer}': {exc}") from exc
    return features, targets, inds


def extract_pixel_features(images: np.ndarray) -> np.ndarray:
    """Raw-pixel features: each image flattened and scaled to [0, 1].

    The baseline every learned representation is compared with (design.md section 8: on
    Fashion-MNIST raw pixels reach about 85-86% with kNN and about 84% with logistic regression).

    Args:
        images: uint8 array, (N, H, W) grey or (N, H, W, C) channels-last.

    Returns:
        float32 (N, H*W) or (N, H*W*C), values ``pixel / 255`` in [0, 1], in C (row-major) order.

    Raises:
        ValueError: if ``images`` is not uint8 or not 3-D/4-D.

    Example:
        >>> extract_pixel_features(np.zeros((2, 28, 28), np.uint8)).shape
        (2, 784)
    """
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255), got {array.dtype}; pass the decoded pixels")
    if array.ndim not in (3, 4):
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got shape {array.shape}")
    return array.reshape(len(array), -1).astype(np.float32) / np.float32(255.0)
