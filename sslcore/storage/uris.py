"""One interface for local paths and ``s3://bucket/key`` URIs.

Every function takes either a local path or an ``s3://`` URI; S3 settings come from the
environment (see :mod:`sslcore.storage.settings`). Remote errors are those of
:func:`sslcore.storage.s3.call_with_retries`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from sslcore.storage import s3

S3_SCHEME = "s3://"


def is_remote(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` is an ``s3://`` URI (anything else is a local path).

    Example:
        >>> is_remote("s3://runs/a/b.pt"), is_remote("/tmp/b.pt")
        (True, False)
    """
    return str(uri).startswith(S3_SCHEME)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; the key may be empty.

    Raises:
        ValueError: not an ``s3://`` URI, or no bucket.
    """
    if not is_remote(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = str(uri)[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key


def join_uri(prefix: str | os.PathLike, *parts: str) -> str:
    """Join a local path or an ``s3://`` prefix with relative parts using ``/``."""
    out = str(prefix).rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def upload_file(local: str | os.PathLike, uri: str | os.PathLike, *,
                part_size: int = s3.DEFAULT_PART_SIZE) -> None:
    """Copy a local file to ``uri`` (S3 multipart above ``part_size``, default 64 MiB).

    Raises:
        FileNotFoundError: ``local`` is not a file.
        StorageError: remote failure (see :mod:`sslcore.storage.s3`).
    """
    if is_remote(uri):
        s3.put_file(*parse_s3_uri(str(uri)), Path(local), part_size=part_size)
    else:
        _copy_local_atomic(Path(local), Path(uri))


def download_file(uri: str | os.PathLike, local: str | os.PathLike) -> None:
    """Copy the object or file at ``uri`` to the local path ``local``.

    Raises:
        FileNotFoundError: ``uri`` does not exist.
        StorageError: remote failure.
    """
    if is_remote(uri):
        s3.get_file(*parse_s3_uri(str(uri)), Path(local))
    else:
        _copy_local_atomic(Path(uri), Path(local))


def upload_dir(local_dir: str | os.PathLike, uri_prefix: str | os.PathLike, *,
               part_size: int = s3.DEFAULT_PART_SIZE) -> list[str]:
    """Copy every file under ``local_dir`` to ``uri_prefix/<relative path>``.

    Returns:
        The destination URIs, sorted.

    Raises:
        NotADirectoryError: ``local_dir`` is not a directory.
        StorageError: remote failure.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        dest = join_uri(uri_prefix, path.relative_to(root).as_posix())
        upload_file(path, dest, part_size=part_size)
        out.append(dest)
    return out


def download_dir(uri_prefix: str | os.PathLike, local_dir: str | os.PathLike) -> list[Path]:
    """Copy every object or file under ``uri_prefix`` into ``local_dir``, keeping relative paths.

    Returns:
        The local files written, sorted.

    Raises:
        StorageError: remote failure.
    """
    prefix = str(uri_prefix).rstrip("/") + "/"
    out = []
    for uri in list_uris(prefix):
        dest = Path(local_dir) / uri[len(prefix):]
        download_file(uri, dest)
        out.append(dest)
    return sorted(out)


def exists(uri: str | os.PathLike) -> bool:
    """Whether the object or local path exists."""
    if is_remote(uri):
        return s3.has_object(*parse_s3_uri(str(uri)))
    return Path(uri).exists()


def list_uris(prefix: str | os.PathLike) -> list[str]:
    """All objects (or local files, recursively) whose URI starts with ``prefix``, sorted.

    For local paths, ``prefix`` is a directory; a missing directory gives an empty list.
    """
    if is_remote(prefix):
        bucket, key = parse_s3_uri(str(prefix))
        return [f"{S3_SCHEME}{bucket}/{k}" for k in s3.list_keys(bucket, key)]
    root = Path(prefix)
    if not root.is_dir():
        return []
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def read_bytes(uri: str | os.PathLike) -> bytes:
    """Read a whole object or file.

    Raises:
        FileNotFoundError: it does not exist.
    """
    if is_remote(uri):
        return s3.get_bytes(*parse_s3_uri(str(uri)))
    return Path(uri).read_bytes()


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` whole: one S3 PUT, or a temporary file renamed into place locally."""
    if is_remote(uri):
        s3.put_bytes(*parse_s3_uri(str(uri)), data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def cache_dir(*parts: str) -> Path:
    """sslcore's local cache: ``$SSLCORE_CACHE_DIR`` or ``~/.cache/sslcore``, joined with ``parts``.

    Remote checkpoints, features and run directories are staged here. The directory is created.
    """
    root = Path(os.environ.get("SSLCORE_CACHE_DIR") or Path.home() / ".cache" / "sslcore")
    out = root.joinpath(*parts)
    out.mkdir(parents=True, exist_ok=True)
    return out


def local_mirror(uri: str) -> Path:
    """The fixed local directory that stages the remote prefix ``uri`` (created).

    ``s3://bucket/a/b`` maps to ``cache_dir("mirror", "bucket", "a", "b")``, so a restarted
    process finds its own staging directory again.

    Raises:
        ValueError: ``uri`` is not an ``s3://`` URI.
    """
    bucket, key = parse_s3_uri(uri)
    parts = [p for p in key.split("/") if p and p not in (".", "..")]
    return cache_dir("mirror", bucket, *parts)


def copy_to_local(uri_or_path: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """Return a local path for ``uri_or_path``, downloading remote objects into ``cache_dir``.

    Local paths come back unchanged (no copy). A remote object lands at
    ``cache_dir/<sha1 of URI>[:16]/<basename>`` and is downloaded again on every call, so a
    changed object is never served stale.

    Raises:
        FileNotFoundError: the object does not exist.
        StorageError: remote failure.
    """
    if not is_remote(uri_or_path):
        return Path(uri_or_path)
    uri = str(uri_or_path)
    digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
    dest = Path(cache_dir) / digest / (uri.rstrip("/").rsplit("/", 1)[-1] or "object")
    download_file(uri, dest)
    return dest


def _copy_local_atomic(src: Path, dest: Path) -> None:
    if not src.is_file():
        raise FileNotFoundError(f"{src} is not a file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
