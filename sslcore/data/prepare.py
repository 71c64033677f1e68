"""Put a dataset into a directory, verified against its manifest: the pipeline's data stage.

``prepare_dataset(source, out_dir)`` dispatches on ``source``:

- a built-in name (``"fashion_mnist"``, ``"fashion_mnist_scenes"``): build it from the locally
  installed raw files;
- an existing local directory (e.g. on a dataset PVC): copy it, then verify names, sizes and counts;
- ``s3://bucket/prefix``: download every object under the prefix (through :mod:`sslcore.storage`);
- ``http(s)://.../name.tar[.gz|.bz2|.xz]`` or ``.zip``: download the archive and unpack it.

A copied dataset in the disk_folder layout (``<split>/<class>/<image>``) gains the disk_filelist
layout (``<split>_images.npy`` with paths relative to the directory, ``<split>_labels.npy`` with
the sorted class index) unless ``to_filelist`` is off. Every path ends in
:func:`~sslcore.data.manifest.verify_dataset`, and a second call with the same source and a
verified ``out_dir`` does no work.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union
from urllib.parse import urlparse

from sslcore.data.fashion_mnist import prepare_fashion_mnist
from sslcore.data.manifest import (
    IMAGE_SUFFIXES,
    MANIFEST_NAME,
    build_manifest,
    list_files,
    read_listing,
    read_manifest,
    verify_dataset,
    write_manifest,
)
from sslcore.data.scenes import prepare_fashion_mnist_scenes
from sslcore.registry import Registry

log = logging.getLogger(__name__)

# built-in data sets: fn(out_dir, *, limit_train, limit_test) -> Path of the prepared directory
BUILTIN_DATASETS: Registry[Callable[..., Path]] = Registry("built-in dataset")
BUILTIN_DATASETS.register("fashion_mnist")(prepare_fashion_mnist)
BUILTIN_DATASETS.register("fashion_mnist_scenes")(prepare_fashion_mnist_scenes)

# URI schemes: fn(uri, out_dir, to_filelist) -> manifest dict
URI_HANDLERS: Registry[Callable[[str, Path, bool], Dict[str, Any]]] = Registry("dataset URI scheme")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")


def prepare_dataset(source: str, out_dir: Union[str, Path], *, limit_train: Optional[int] = None,
                    limit_test: Optional[int] = None, to_filelist: bool = True,
                    options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Materialise a dataset in ``out_dir`` and return its verified manifest.

    Args:
        source: a built-in name (``"fashion_mnist"``), a local dataset directory, or a URI whose
            scheme has a handler in :data:`URI_HANDLERS`.
        out_dir: destination directory (created).
        limit_train: subset size of the train split (built-in sets only; see each builder).
        limit_test: subset size of the test split (built-in sets only).
        to_filelist: give a copied disk_folder dataset the disk_filelist layout too.
        options: extra keyword arguments of a built-in set's builder (e.g. ``canvas_size`` and
            ``seed`` for ``fashion_mnist_scenes``); not allowed for copies.

    Returns:
        The manifest of ``out_dir`` (see :mod:`sslcore.data.manifest`).

    Raises:
        ValueError: unsupported URI scheme or archive type, limits given for a copy, or a
            verification failure (the message names the differing files).
        StorageError: an ``s3://`` source cannot be read (credentials, bucket).
        urllib.error.URLError: an ``http(s)://`` source cannot be downloaded.
        FileNotFoundError: if ``source`` is neither a built-in name nor an existing directory.

    Example:
        >>> manifest = prepare_dataset("fashion_mnist", "runs/data/fmnist", limit_train=200)
        >>> manifest["splits"]["train"]["num_images"]
        200
    """
    out_dir = Path(out_dir)
    if source in BUILTIN_DATASETS:
        root = BUILTIN_DATASETS.get(source)(out_dir, limit_train=limit_train, limit_test=limit_test,
                                            **(options or {}))
        return verify_dataset(root)
    if options:
        raise ValueError(f"builder options {sorted(options)} apply to built-in sets only, not to "
                         f"'{source}'; drop them")
    scheme = urlparse(source).scheme
    if scheme and len(scheme) > 1:  # one letter would be a Windows drive
        if scheme not in URI_HANDLERS:
            raise ValueError(
                f"dataset source '{source}': the {scheme}:// scheme is not supported; copy the "
                f"data to a local directory and pass that path. Supported schemes: "
                f"{', '.join(URI_HANDLERS.names())}"
            )
        _no_limits(source, limit_train, limit_test)
        return URI_HANDLERS.get(scheme)(source, out_dir, to_filelist)
    if Path(source).is_dir():
        _no_limits(source, limit_train, limit_test)
        return copy_dataset(source, out_dir, to_filelist=to_filelist)
    raise FileNotFoundError(
        f"dataset source '{source}' is neither a built-in set ({', '.join(BUILTIN_DATASETS.names())}) "
        "nor an existing directory; check the spelling or the path"
    )


def _no_limits(source: str, limit_train: Optional[int], limit_test: Optional[int]) -> None:
    if limit_train is not None or limit_test is not None:
        raise ValueError(
            f"limit_train/limit_test apply to built-in sets only, not to '{source}'; drop the "
            "limits or prepare a subset at the source"
        )


def copy_dataset(source: Union[str, Path], out_dir: Union[str, Path], *,
                 to_filelist: bool = True) -> Dict[str, Any]:
    """Copy a local dataset directory and verify the copy (names, sizes, per-split counts).

    A source with a manifest is verified before copying; a source without one is described by a
    new manifest, written into the copy only (the source is never modified). When ``out_dir``
    already holds a verified copy of the same source listing, nothing is copied.

    Args:
        source: the dataset directory.
        out_dir: the destination (created; must not be inside ``source`` or vice versa).
        to_filelist: add the disk_filelist layout to a disk_folder-only copy
            (:func:`write_filelists`); the manifest records the conversion.

    Returns:
        The manifest of the verified copy.

    Raises:
        ValueError: if the directories overlap, or the source or the copy fails verification.
        FileNotFoundError: if ``source`` is not a directory.
    """
    source, out_dir = Path(source).resolve(), Path(out_dir).resolve()
    if source == out_dir or source in out_dir.parents or out_dir in source.parents:
        raise ValueError(
            f"cannot copy {source} into {out_dir}: the directories overlap; choose another out_dir"
        )
    if (source / MANIFEST_NAME).is_file():
        manifest = verify_dataset(source)
        files = read_listing(source)
    else:
        files = list_files(source)
        manifest = build_manifest(source, name=source.name, files=files,
                                  content={"source": "directory", "path": str(source)})
    digest = manifest["listing_digest"]
    if _holds_copy(out_dir, digest):
        log.info("%s already holds a verified copy of %s", out_dir, source)
        return read_manifest(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in files:
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target)
    added = write_filelists(out_dir, files) if to_filelist else {}
    if added:
        files = {**files, **added}
        content = {**manifest["content"], "converted": "disk_folder -> disk_filelist",
                   "source_listing_digest": digest}
        manifest = build_manifest(out_dir, name=manifest["name"], files=files, content=content,
                                  classes=manifest.get("classes") or None)
    write_manifest(out_dir, manifest, files)
    return verify_dataset(out_dir)


def write_filelists(root: Path, files: Dict[str, int]) -> Dict[str, int]:
    """Write the disk_filelist layout for every disk_folder split of ``root`` that lacks one.

    ``<split>_images.npy`` holds the image paths relative to ``root`` (sorted by class, then
    name); ``<split>_labels.npy`` the int64 index of the class folder in the sorted class list
    of all splits, so labels agree across splits.

    Args:
        root: the dataset directory.
        files: its listing (relative path -> size).

    Returns:
        The files written (relative path -> size).
    """
    import numpy as np

    from sslcore.data.manifest import describe_splits

    splits = describe_splits(files)
    classes = sorted({c for entry in splits.values() for c in entry["classes"]})
    index = {c: i for i, c in enumerate(classes)}
    written: Dict[str, int] = {}
    for split in sorted(splits):
        if f"{split}_images.npy" in files:
            continue
        images = sorted(n for n in files if n.startswith(f"{split}/") and len(n.split("/")) == 3
                        and n.lower().endswith(IMAGE_SUFFIXES))
        labels = np.array([index[n.split("/")[1]] for n in images], dtype=np.int64)
        for suffix, array in (("images", np.array(images)), ("labels", labels)):
            name = f"{split}_{suffix}.npy"
            np.save(root / name, array)
            written[name] = (root / name).stat().st_size
        log.info("wrote the disk_filelist layout of %s: %d images, %d classes", split,
                 len(images), len(classes))
    return written


def _holds_copy(out_dir: Path, digest: str) -> bool:
    if not (out_dir / MANIFEST_NAME).is_file():
        return False
    try:
        manifest = verify_dataset(out_dir)
    except (ValueError, FileNotFoundError) as exc:
        log.info("copying again into %s: %s", out_dir, exc)
        return False
    copied_from = manifest.get("content", {}).get("source_listing_digest", manifest["listing_digest"])
    return copied_from == digest


@URI_HANDLERS.register("s3")
def copy_s3_dataset(uri: str, out_dir: Path, to_filelist: bool = True) -> Dict[str, Any]:
    """Download the dataset under the ``s3://`` prefix ``uri`` and copy it into ``out_dir``.

    Objects are staged in the local mirror of the prefix (:func:`sslcore.storage.local_mirror`),
    then :func:`copy_dataset` verifies and copies them, so a prefix with a manifest is checked
    file by file.

    Raises:
        FileNotFoundError: nothing is stored under ``uri``.
        StorageError: the object store cannot be read.
    """
    from sslcore.engine.remote import fetch_dir

    return copy_dataset(fetch_dir(uri.rstrip("/")), out_dir, to_filelist=to_filelist)


def _download_archive(url: str, out_dir: Path, to_filelist: bool) -> Dict[str, Any]:
    """Download an archive from ``url``, unpack it safely, and copy the dataset inside."""
    import hashlib
    import tarfile
    import tempfile
    import urllib.request
    import zipfile

    name = Path(urlparse(url).path).name
    if not name.lower().endswith(ARCHIVE_SUFFIXES):
        raise ValueError(f"dataset URL '{url}' must name an archive ({', '.join(ARCHIVE_SUFFIXES)})"
                         "; pack the dataset directory with `tar czf data.tar.gz -C DIR .`")
    from sslcore.storage import cache_dir

    staging = cache_dir("http", hashlib.sha1(url.encode()).hexdigest()[:16])
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        archive = Path(tmp) / name
        with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as fh:
            shutil.copyfileobj(response, fh, length=1 << 20)
        unpacked = Path(tmp) / "unpacked"
        if name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():  # refuse paths that leave the directory
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise ValueError(f"{url}: archive member '{member}' escapes the directory")
                zf.extractall(unpacked)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(unpacked, filter="data")  # no links out, no devices, no absolute paths
        entries = [p for p in unpacked.iterdir()]
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else unpacked
        return copy_dataset(root, out_dir, to_filelist=to_filelist)


URI_HANDLERS.register("http")(_download_archive)
URI_HANDLERS.register("https")(_download_archive)


__all__ = ["BUILTIN_DATASETS", "URI_HANDLERS", "copy_dataset", "copy_s3_dataset", "prepare_dataset",
           "verify_dataset", "write_filelists"]
