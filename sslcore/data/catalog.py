"""The dataset catalog: dataset names -> (data path, label path) per split, VISSL's format.

A catalog is a JSON file mapping each name to its splits, exactly as VISSL's
``dataset_catalog.json``::

    {"fashion_mnist_filelist": {"train": ["/d/train_images.npy", "/d/train_labels.npy"],
                                "val":   ["/d/test_images.npy",  "/d/test_labels.npy"]}}

For ``disk_folder`` entries both paths are the split directory (its class folders give the labels).
Configs name a dataset with ``DATA.TRAIN.DATASET_NAMES`` and leave ``DATA_PATHS`` empty; the split
``TEST`` reads the catalog's ``val`` entry, as in VISSL.

The user catalog lives at ``$SSLCORE_DATASET_CATALOG`` when that variable is set, else at
``~/.sslcore/dataset_catalog.json``. Writes replace the file atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from sslcore.registry import close_matches

CATALOG_ENV = "SSLCORE_DATASET_CATALOG"
_SPLIT_ALIASES = {"train": "train", "val": "val", "test": "val"}


def catalog_path() -> Path:
    """The user catalog file: ``$SSLCORE_DATASET_CATALOG`` or ``~/.sslcore/dataset_catalog.json``."""
    env = os.environ.get(CATALOG_ENV)
    return Path(env).expanduser() if env else Path.home() / ".sslcore" / "dataset_catalog.json"


def load_catalog(path: Optional[Union[str, Path]] = None) -> Dict[str, Dict[str, List[str]]]:
    """Read a catalog file (the user catalog by default); a missing file is an empty catalog.

    Args:
        path: the catalog file; default :func:`catalog_path`.

    Returns:
        ``{name: {split: [data_path, label_path]}}``.

    Raises:
        ValueError: if the file is not JSON in VISSL's catalog format (the message names the entry).
    """
    path = Path(path) if path is not None else catalog_path()
    if not path.is_file():
        return {}
    try:
        catalog = json.loads(path.read_text() or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"dataset catalog {path} is not valid JSON ({exc}); fix or delete the file") from exc
    if not isinstance(catalog, dict):
        raise ValueError(f"dataset catalog {path} must be a JSON object {{name: {{split: [data, labels]}}}}")
    for name, splits in catalog.items():
        _check_entry(name, splits, str(path))
    return catalog


def _check_entry(name: str, splits: object, origin: str) -> None:
    if not isinstance(splits, dict) or not splits:
        raise ValueError(f"{origin}: dataset '{name}' must map splits to [data_path, label_path]")
    for split, paths in splits.items():
        if split not in ("train", "val"):
            raise ValueError(
                f"{origin}: dataset '{name}' has split '{split}'; VISSL catalogs use 'train' and 'val'"
            )
        two_strings = isinstance(paths, (list, tuple)) and len(paths) == 2
        if not (two_strings and all(isinstance(p, str) for p in paths)):
            raise ValueError(
                f"{origin}: dataset '{name}' split '{split}' must be [data_path, label_path], got {paths!r}"
            )


def register_dataset(name: str, *, train: Optional[Sequence[str]] = None, val: Optional[Sequence[str]] = None,
                     path: Optional[Union[str, Path]] = None) -> Path:
    """Add or replace a dataset in the user catalog.

    Args:
        name: the dataset name configs use in ``DATASET_NAMES``.
        train: ``[data_path, label_path]`` of the train split.
        val: ``[data_path, label_path]`` of the val split (config split ``TEST``).
        path: the catalog file; default :func:`catalog_path`.

    Returns:
        The catalog file written.

    Raises:
        ValueError: if neither split is given or a split is not two path strings.

    Example:
        >>> register_dataset("my_set", train=["/d/train", "/d/train"], val=["/d/val", "/d/val"])
    """
    splits = {k: [str(p) for p in v] for k, v in (("train", train), ("val", val)) if v is not None}
    if not splits:
        raise ValueError(f"register_dataset('{name}'): give train=[data, labels] and/or val=[data, labels]")
    _check_entry(name, splits, "register_dataset")
    path = Path(path) if path is not None else catalog_path()
    catalog = load_catalog(path)
    catalog[name] = splits
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(catalog, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def list_datasets(path: Optional[Union[str, Path]] = None) -> List[str]:
    """Names in the catalog, sorted."""
    return sorted(load_catalog(path))


def get_dataset_paths(name: str, split: str, *, path: Optional[Union[str, Path]] = None) -> Tuple[str, str]:
    """Look up a dataset's ``(data_path, label_path)`` for one split.

    Args:
        name: the dataset name.
        split: ``"train"``, ``"val"`` or ``"test"`` (any case; ``test`` reads ``val``, as in VISSL).
        path: the catalog file; default :func:`catalog_path`.

    Returns:
        ``(data_path, label_path)`` as stored.

    Raises:
        KeyError: if the name is unknown (the message lists close names and the catalog file)
            or the dataset has no such split.
        ValueError: if ``split`` is not train/val/test.

    Example:
        >>> get_dataset_paths("fashion_mnist_filelist", "TEST")
        ('/d/test_images.npy', '/d/test_labels.npy')
    """
    key = _SPLIT_ALIASES.get(split.lower())
    if key is None:
        raise ValueError(f"split must be train, val or test (any case), got {split!r}")
    file = Path(path) if path is not None else catalog_path()
    catalog = load_catalog(file)
    if name not in catalog:
        hint = close_matches(name, list(catalog))
        raise KeyError(
            f"dataset '{name}' is not in the catalog {file}."
            + (f" Did you mean: {', '.join(hint)}?" if hint else "")
            + f" Known: {', '.join(sorted(catalog)) or 'none'}. Register it with "
            "sslcore.data.register_dataset(name, train=[...], val=[...]) or prepare it with "
            f"sslcore.data.prepare_dataset (set ${CATALOG_ENV} to use another catalog file)."
        )
    if key not in catalog[name]:
        raise KeyError(f"dataset '{name}' has no '{key}' split in {file}; it has {sorted(catalog[name])}")
    data_path, label_path = catalog[name][key]
    return data_path, label_path
