"""Put a dataset into a directory, verified against its manifest: the pipeline's data stage.

``prepare_dataset(source, out_dir)`` dispatches on ``source``:

- a built-in name (``"fashion_mnist"``): build it from the locally installed raw files;
- an existing local directory: copy it, then verify names, sizes and counts;
- ``s3://`` / ``http(s)://``: not yet supported (a later storage stage adds a handler to
  :data:`URI_HANDLERS`).

Every path ends in :func:`~sslcore.data.manifest.verify_dataset`, and a second call with the same
source and a verified ``out_dir`` does no work.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union
from urllib.parse import urlparse

from sslcore.data.fashion_mnist import prepare_fashion_mnist
from sslcore.data.manifest import (
    MANIFEST_NAME,
    build_manifest,
    list_files,
    read_listing,
    read_manifest,
    verify_dataset,
    write_manifest,
)
from sslcore.registry import Registry

log = logging.getLogger(__name__)

# built-in data sets: fn(out_dir, *, limit_train, limit_test) -> Path of the prepared directory
BUILTIN_DATASETS: Registry[Callable[..., Path]] = Registry("built-in dataset")
BUILTIN_DATASETS.register("fashion_mnist")(prepare_fashion_mnist)

# URI schemes: fn(uri, out_dir) -> manifest dict. Empty for now; storage adds "s3", "http", "https".
URI_HANDLERS: Registry[Callable[[str, Path], Dict[str, Any]]] = Registry("dataset URI scheme")


def prepare_dataset(source: str, out_dir: Union[str, Path], *, limit_train: Optional[int] = None,
                    limit_test: Optional[int] = None) -> Dict[str, Any]:
    """Materialise a dataset in ``out_dir`` and return its verified manifest.

    Args:
        source: a built-in name (``"fashion_mnist"``), a local dataset directory, or a URI whose
            scheme has a handler in :data:`URI_HANDLERS`.
        out_dir: destination directory (created).
        limit_train: subset size of the train split (built-in sets only; see each builder).
        limit_test: subset size of the test split (built-in sets only).

    Returns:
        The manifest of ``out_dir`` (see :mod:`sslcore.data.manifest`).

    Raises:
        ValueError: unsupported URI scheme, limits given for a directory copy, or a verification
            failure (the message names the differing files).
        FileNotFoundError: if ``source`` is neither a built-in name nor an existing directory.

    Example:
        >>> manifest = prepare_dataset("fashion_mnist", "runs/data/fmnist", limit_train=200)
        >>> manifest["splits"]["train"]["num_images"]
        200
    """
    out_dir = Path(out_dir)
    if source in BUILTIN_DATASETS:
        root = BUILTIN_DATASETS.get(source)(out_dir, limit_train=limit_train, limit_test=limit_test)
        return verify_dataset(root)
    scheme = urlparse(source).scheme
    if scheme and len(scheme) > 1:  # one letter would be a Windows drive
        if scheme not in URI_HANDLERS:
            raise ValueError(
                f"dataset source '{source}': the {scheme}:// scheme is not supported yet; copy the "
                f"data to a local directory and pass that path. Supported schemes: "
                f"{', '.join(URI_HANDLERS.names()) or 'none yet'}"
            )
        return URI_HANDLERS.get(scheme)(source, out_dir)
    if Path(source).is_dir():
        if limit_train is not None or limit_test is not None:
            raise ValueError(
                f"limit_train/limit_test apply to built-in sets only, not to the directory '{source}'; "
                "drop the limits or prepare a subset at the source"
            )
        return copy_dataset(source, out_dir)
    raise FileNotFoundError(
        f"dataset source '{source}' is neither a built-in set ({', '.join(BUILTIN_DATASETS.names())}) "
        "nor an existing directory; check the spelling or the path"
    )


def copy_dataset(source: Union[str, Path], out_dir: Union[str, Path]) -> Dict[str, Any]:
    """Copy a local dataset directory and verify the copy (names, sizes, per-split counts).

    A source with a manifest is verified before copying; a source without one is described by a
    new manifest, written into the copy only (the source is never modified). When ``out_dir``
    already holds a verified copy with the same listing, nothing is copied.

    Args:
        source: the dataset directory.
        out_dir: the destination (created; must not be inside ``source`` or vice versa).

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
    if _holds_copy(out_dir, manifest["listing_digest"]):
        log.info("%s already holds a verified copy of %s", out_dir, source)
        return read_manifest(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in files:
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target)
    write_manifest(out_dir, manifest, files)
    return verify_dataset(out_dir)


def _holds_copy(out_dir: Path, digest: str) -> bool:
    if not (out_dir / MANIFEST_NAME).is_file():
        return False
    try:
        manifest = verify_dataset(out_dir)
    except (ValueError, FileNotFoundError) as exc:
        log.info("copying again into %s: %s", out_dir, exc)
        return False
    return manifest["listing_digest"] == digest


__all__ = ["BUILTIN_DATASETS", "URI_HANDLERS", "copy_dataset", "prepare_dataset", "verify_dataset"]
