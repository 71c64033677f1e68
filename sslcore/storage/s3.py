"""S3 operations on (bucket, key) with the minio SDK: retries, multipart, clear errors.

Transient failures (connection refused/reset, timeouts, HTTP 5xx, ``SlowDown``) are retried with
exponential back-off (``S3Settings.backoff_s`` doubling, at most ``S3Settings.max_attempts``
attempts). Bad credentials and a missing bucket are not retried: they raise at once with what to fix.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from sslcore.storage.settings import (
    ACCESS_KEY_VARS,
    ENV_ENDPOINT,
    ENV_MAX_ATTEMPTS,
    ENV_SECRET_FILE,
    SECRET_KEY_VARS,
    S3Settings,
    load_s3_settings,
)

logger = logging.getLogger(__name__)

#: Part size for multipart uploads: files larger than this are sent in parts of this size.
DEFAULT_PART_SIZE = 64 * 1024 * 1024
#: S3's smallest allowed part (except the last one).
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_BACKOFF_S = 30.0

AUTH_ERROR_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}
)
TRANSIENT_ERROR_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "ServerBusy"}
)

T = TypeVar("T")


class StorageError(RuntimeError):
    """Base class for object-storage failures."""


class StorageAuthError(StorageError):
    """The server rejected the credentials."""


class BucketNotFoundError(StorageError):
    """The bucket does not exist on the endpoint."""


class StorageUnavailableError(StorageError):
    """The endpoint kept failing with transient errors until the attempts ran out."""


@functools.lru_cache(maxsize=8)
def _build_client(settings: S3Settings) -> Minio:
    http_client = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10.0, read=120.0),
        retries=False,  # our own back-off below owns retrying
        maxsize=10,
        cert_reqs="CERT_REQUIRED" if settings.cert_check else "CERT_NONE",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )
    return Minio(
        settings.endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        secure=settings.secure,
        region=settings.region,
        http_client=http_client,
        cert_check=settings.cert_check,
    )


def get_client(settings: S3Settings | None = None) -> Minio:
    """Return a (cached) minio client for ``settings`` or the environment's settings.

    Raises:
        ValueError: no endpoint is configured (see :mod:`sslcore.storage.settings`).
    """
    return _build_client(settings or load_s3_settings())


def _error_code(exc: BaseException) -> tuple[str | None, int | None]:
    """S3 error code and HTTP status of ``exc``; (None, None) for network-level errors.

    Some servers (rclone) answer errors as ``text/xml``, which minio reports as
    :class:`InvalidResponseError`; the code is then read from the body.
    """
    if isinstance(exc, S3Error):
        return exc.code, getattr(exc.response, "status", None)
    if isinstance(exc, ServerError):
        return None, exc.status_code
    if isinstance(exc, InvalidResponseError):
        match = re.search(r"<Code>([^<]+)</Code>", exc._body or "")  # noqa: SLF001
        return (match.group(1) if match else None), exc._code  # noqa: SLF001
    return None, None


def _is_transient(exc: BaseException, code: str | None, status: int | None) -> bool:
    if status is not None:
        return status >= 500 or code in TRANSIENT_ERROR_CODES
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def _translate(code: str | None, settings: S3Settings, bucket: str, key: str) -> Exception | None:
    if code in AUTH_ERROR_CODES:
        return StorageAuthError(
            f"S3 endpoint {settings.url} rejected the credentials ({code}) for "
            f"s3://{bucket}/{key}: set {ACCESS_KEY_VARS[0]}/{SECRET_KEY_VARS[0]} "
            f"(or {ACCESS_KEY_VARS[1]}/{SECRET_KEY_VARS[1]}), or {ENV_SECRET_FILE}, to valid "
            "keys with access to this bucket"
        )
    if code == "NoSuchBucket":
        return BucketNotFoundError(
            f"bucket {bucket!r} does not exist at {settings.url}: create it with "
            f"`mc mb <alias>/{bucket}` or run the bucket-creation Job, or fix the URI "
            f"s3://{bucket}/{key}"
        )
    if code in ("NoSuchKey", "NoSuchObject"):
        return FileNotFoundError(f"s3://{bucket}/{key} does not exist at {settings.url}")
    return None


def call_with_retries(
    fn: Callable[[Minio], T], *, bucket: str, key: str, settings: S3Settings | None = None
) -> T:
    """Run ``fn(client)`` with back-off on transient errors; translate S3 errors.

    Args:
        fn: the operation; it must be safe to run again from the start.
        bucket: bucket name, for error messages.
        key: object key or prefix, for error messages.
        settings: connection settings; defaults to :func:`load_s3_settings`.

    Returns:
        What ``fn`` returns.

    Raises:
        StorageAuthError: bad credentials (not retried).
        BucketNotFoundError: the bucket does not exist (not retried).
        FileNotFoundError: the object does not exist (not retried).
        StorageUnavailableError: transient errors outlasted ``settings.max_attempts`` attempts.
        minio.error.S3Error: any other S3 error (not retried).
    """
    settings = settings or load_s3_settings()
    client = _build_client(settings)
    delay = settings.backoff_s
    for attempt in range(1, settings.max_attempts + 1):
        try:
            return fn(client)
        except Exception as exc:  # noqa: BLE001 - classified below
            code, status = _error_code(exc)
            translated = _translate(code, settings, bucket, key)
            if translated is not None:
                raise translated from exc
            if not _is_transient(exc, code, status):
                if isinstance(exc, InvalidResponseError):
                    raise StorageError(
                        f"S3 endpoint {settings.url}: HTTP {status} ({code}) for "
                        f"s3://{bucket}/{key}"
                    ) from exc
                raise
            if attempt == settings.max_attempts:
                raise StorageUnavailableError(
                    f"S3 endpoint {settings.url} failed {attempt} times for s3://{bucket}/{key} "
                    f"(last error: {type(exc).__name__}: {exc}); check that the server is "
                    f"running and reachable, that {ENV_ENDPOINT} has the right scheme, host "
                    f"and port, or raise {ENV_MAX_ATTEMPTS}"
                ) from exc
            logger.warning(
                "S3 %s: transient error on s3://%s/%s (attempt %d/%d): %s; retrying in %.1fs",
                settings.url, bucket, key, attempt, settings.max_attempts,
                type(exc).__name__, delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
    raise AssertionError("unreachable")  # pragma: no cover


def put_file(bucket: str, key: str, local: Path, *, part_size: int = DEFAULT_PART_SIZE) -> None:
    """Upload a file; larger than ``part_size`` bytes goes multipart in parts of that size.

    Raises:
        ValueError: ``part_size`` below 5 MiB.
        FileNotFoundError: ``local`` does not exist.
        StorageError: see :func:`call_with_retries`.
    """
    if part_size < MIN_PART_SIZE:
        raise ValueError(f"part_size must be >= {MIN_PART_SIZE} bytes (5 MiB), got {part_size}")
    if not Path(local).is_file():
        raise FileNotFoundError(f"{local} is not a file")
    call_with_retries(
        lambda c: c.fput_object(bucket, key, str(local), part_size=part_size),
        bucket=bucket, key=key,
    )


def get_file(bucket: str, key: str, local: Path) -> None:
    """Download an object to ``local`` (written to a temporary name, then renamed)."""
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    call_with_retries(lambda c: c.fget_object(bucket, key, str(local)), bucket=bucket, key=key)


def put_bytes(bucket: str, key: str, data: bytes) -> None:
    """Write ``data`` as one object (a single PUT, so readers see all of it or nothing)."""
    call_with_retries(
        lambda c: c.put_object(bucket, key, io.BytesIO(data), len(data)), bucket=bucket, key=key
    )


def get_bytes(bucket: str, key: str) -> bytes:
    """Read a whole object."""

    def _read(c: Minio) -> bytes:
        response = c.get_object(bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    return call_with_retries(_read, bucket=bucket, key=key)


def has_object(bucket: str, key: str) -> bool:
    """Whether the object exists (a missing bucket raises :class:`BucketNotFoundError`)."""

    def _stat(c: Minio) -> bool:
        try:
            c.stat_object(bucket, key)
            return True
        except (S3Error, InvalidResponseError) as exc:
            code, status = _error_code(exc)
            if code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound") or status == 404:
                return False
            raise

    return call_with_retries(_stat, bucket=bucket, key=key)


def list_keys(bucket: str, prefix: str) -> list[str]:
    """All object keys under ``prefix`` (recursive), sorted."""

    def _list(c: Minio) -> list[str]:
        return sorted(
            o.object_name for o in c.list_objects(bucket, prefix=prefix, recursive=True)
            if not o.is_dir
        )

    return call_with_retries(_list, bucket=bucket, key=prefix)
