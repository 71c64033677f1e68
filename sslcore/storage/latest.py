"""The "latest checkpoint" pointer: a small object written only after the checkpoint is complete.

``<prefix>/checkpoint.latest`` holds the checkpoint's name (relative to ``prefix``) as UTF-8 text.
It is replaced whole — one S3 PUT, or ``os.replace`` of a temporary file locally — and only after
the checkpoint itself exists, so a reader never follows a pointer to a partial upload.
"""

from __future__ import annotations

import os

from sslcore.storage.uris import exists, join_uri, read_bytes, write_bytes

LATEST_POINTER_NAME = "checkpoint.latest"


def write_latest_pointer(prefix: str | os.PathLike, name: str) -> str:
    """Point ``<prefix>/checkpoint.latest`` at ``<prefix>/<name>``.

    Call it after the checkpoint upload has returned (S3 objects appear whole when the PUT or
    multipart completion returns).

    Args:
        prefix: a local directory or an ``s3://bucket/key`` prefix.
        name: the checkpoint's path relative to ``prefix``, e.g. ``"model_phase3.torch"``.

    Returns:
        The pointer's URI.

    Raises:
        ValueError: ``name`` is empty or absolute, or contains a newline.
        FileNotFoundError: ``<prefix>/<name>`` does not exist (yet).
        StorageError: remote failure.

    Example:
        >>> write_latest_pointer("s3://runs/r1/checkpoints", "model_phase3.torch")  # doctest: +SKIP
    """
    if not name or name.startswith("/") or "\n" in name:
        raise ValueError(f"checkpoint name must be a non-empty relative path, got {name!r}")
    target = join_uri(prefix, name)
    if not exists(target):
        raise FileNotFoundError(f"refusing to point {LATEST_POINTER_NAME} at {target}: not found")
    pointer = join_uri(prefix, LATEST_POINTER_NAME)
    write_bytes(pointer, name.encode("utf-8"))
    return pointer


def read_latest_pointer(prefix: str | os.PathLike) -> str | None:
    """Return the checkpoint name in ``<prefix>/checkpoint.latest``, or None when there is none.

    Raises:
        StorageError: remote failure (a missing bucket included).
    """
    pointer = join_uri(prefix, LATEST_POINTER_NAME)
    try:
        return read_bytes(pointer).decode("utf-8").strip() or None
    except FileNotFoundError:
        return None
