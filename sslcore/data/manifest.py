"""The dataset manifest: what a prepared dataset directory holds, and a check against it.

Every prepared dataset directory carries two files at its root:

- ``dataset.json``: name, layouts (``disk_folder`` and/or ``disk_filelist``), per-split image counts
  and bytes, class names in label-id order, total files and bytes, a digest of the file listing,
  and ``content`` (what produced the directory, used to skip work that is already done);
- ``dataset_files.tsv``: one ``<relative path>\\t<size in bytes>`` line per file, sorted.

:func:`verify_dataset` compares a directory with both, so a copy between pipeline stages (or a
half-written directory) is caught before training reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

MANIFEST_NAME = "dataset.json"
LISTING_NAME = "dataset_files.tsv"
FORMAT = "sslcore-dataset/1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_OWN_FILES = (MANIFEST_NAME, LISTING_NAME)


def list_files(root: Union[str, Path]) -> Dict[str, int]:
    """Sizes of every regular file under ``root``, except the manifest files themselves.

    Args:
        root: a directory.

    Returns:
        ``{relative POSIX path: size in bytes}``, sorted by path.

    Raises:
        FileNotFoundError: if ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory {root} does not exist; prepare or copy it first")
    sizes: Dict[str, int] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append(name)
                elif entry.is_file() and name not in _OWN_FILES:
                    sizes[name] = entry.stat().st_size
    return dict(sorted(sizes.items()))


def listing_digest(files: Dict[str, int]) -> str:
    """SHA-256 over the sorted ``path\\tsize`` lines: equal digests mean equal names and sizes."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\t{files[name]}\n".encode())
    return digest.hexdigest()


def describe_splits(files: Dict[str, int]) -> Dict[str, Dict[str, Any]]:
    """Find the disk_folder splits (``<split>/<class>/<image>``) and count their images.

    Args:
        files: as returned by :func:`list_files`.

    Returns:
        ``{split: {"num_images": int, "bytes": int, "classes": [sorted class names]}}``.
    """
    splits: Dict[str, Dict[str, Any]] = {}
    for name, size in files.items():
        parts = name.split("/")
        if len(parts) != 3 or not parts[2].lower().endswith(IMAGE_SUFFIXES):
            continue
        entry = splits.setdefault(parts[0], {"num_images": 0, "bytes": 0, "classes": set()})
        entry["num_images"] += 1
        entry["bytes"] += size
        entry["classes"].add(parts[1])
    for entry in splits.values():
        entry["classes"] = sorted(entry["classes"])
    return splits


def build_manifest(root: Union[str, Path], *, name: str, content: Dict[str, Any],
                   classes: Optional[List[str]] = None,
                   files: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """Describe the directory ``root`` as a manifest dict (nothing is written).

    Args:
        root: the dataset directory.
        name: the dataset's name (``"fashion_mnist"``).
        content: what produced the directory (source and options); two directories with equal
            ``content`` and equal listings hold the same data.
        classes: class names in label-id order; default: the sorted class folders of the first split.
        files: the listing, if already computed.

    Returns:
        The manifest (see the module docstring).
    """
    files = list_files(root) if files is None else files
    folder_splits = describe_splits(files)
    filelist_splits = sorted(n[: -len("_images.npy")] for n in files
                             if "/" not in n and n.endswith("_images.npy"))
    layouts = (["disk_folder"] if folder_splits else []) + (["disk_filelist"] if filelist_splits else [])
    if classes is None:
        classes = next(iter(folder_splits.values()))["classes"] if folder_splits else []
    return {
        "format": FORMAT,
        "name": name,
        "layouts": layouts,
        "splits": {s: {"num_images": e["num_images"], "bytes": e["bytes"]} for s, e in folder_splits.items()},
        "filelist_splits": filelist_splits,
        "classes": list(classes),
        "num_files": len(files),
        "total_bytes": int(sum(files.values())),
        "listing": LISTING_NAME,
        "listing_digest": listing_digest(files),
        "content": content,
    }


def write_manifest(root: Union[str, Path], manifest: Dict[str, Any], files: Dict[str, int]) -> Path:
    """Write ``dataset_files.tsv`` then ``dataset.json`` (last, so a crash leaves no manifest).

    Returns:
        The path of ``dataset.json``.
    """
    root = Path(root)
    lines = "".join(f"{name}\t{files[name]}\n" for name in sorted(files))
    _atomic_write(root / LISTING_NAME, lines)
    _atomic_write(root / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    return root / MANIFEST_NAME


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_manifest(root: Union[str, Path]) -> Dict[str, Any]:
    """Read ``<root>/dataset.json``.

    Raises:
        FileNotFoundError: if there is no manifest (the fix: prepare the dataset with
            ``sslcore.data.prepare_dataset``).
        ValueError: if the manifest is not valid JSON of this format.
    """
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not a prepared dataset; run "
            f"sslcore.data.prepare_dataset(<source>, '{root}') to create it"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}); delete it and prepare the dataset again"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not an {FORMAT} manifest; delete it and prepare the dataset again")
    return manifest


def read_listing(root: Union[str, Path]) -> Dict[str, int]:
    """Read ``<root>/dataset_files.tsv`` into ``{relative path: size}``.

    Raises:
        FileNotFoundError: if the listing is missing.
        ValueError: if a line is malformed.
    """
    path = Path(root) / LISTING_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; prepare the dataset again to rewrite its manifest")
    files: Dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        name, sep, size = line.rpartition("\t")
        if not sep or not size.isdigit():
            raise ValueError(
                f"{path}:{number}: expected '<path>\\t<bytes>', got {line!r}; prepare the dataset again"
            )
        files[name] = int(size)
    return files


def _describe_differences(expected: Dict[str, int], found: Dict[str, int]) -> List[str]:
    missing = [n for n in expected if n not in found]
    resized = [f"{n} ({found[n]} bytes, expected {expected[n]})"
               for n in expected if n in found and found[n] != expected[n]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} file(s) missing, e.g. {', '.join(missing[:5])}")
    if resized:
        problems.append(f"{len(resized)} file(s) with a different size, e.g. {', '.join(resized[:5])}")
    return problems


def verify_dataset(path: Union[str, Path]) -> Dict[str, Any]:
    """Check a dataset directory against its manifest: every listed file present with its size,
    and the per-split image counts.

    Files that are not in the listing are tolerated (they are not part of the dataset).

    Args:
        path: the dataset directory (holding ``dataset.json``).

    Returns:
        The manifest dict.

    Raises:
        FileNotFoundError: if ``path`` or its manifest does not exist.
        ValueError: naming what differs (missing files, sizes, counts), with the fix.

    Example:
        >>> manifest = verify_dataset("runs/data/fashion_mnist")
        >>> manifest["splits"]["train"]["num_images"]
        60000
    """
    root = Path(path)
    manifest = read_manifest(root)
    expected = read_listing(root)
    problems = []
    if len(expected) != manifest["num_files"] or listing_digest(expected) != manifest["listing_digest"]:
        problems.append(f"{LISTING_NAME} does not match {MANIFEST_NAME} (edited or half-written)")
    found = list_files(root)
    problems += _describe_differences(expected, found)
    actual_splits = describe_splits({n: found[n] for n in expected if n in found})
    for split, entry in manifest["splits"].items():
        count = actual_splits.get(split, {}).get("num_images", 0)
        if count != entry["num_images"]:
            problems.append(f"split '{split}' has {count} images, manifest says {entry['num_images']}")
    if problems:
        raise ValueError(
            f"dataset {root} does not match its manifest: " + "; ".join(problems)
            + ". Prepare or copy the dataset again (e.g. sslcore.data.prepare_dataset)."
        )
    return manifest
