"""S3 connection settings, read from the environment or a mounted secret — never from config files.

Environment variables (a secret file, when given, fills whatever the environment leaves unset):

- ``SSLCORE_S3_ENDPOINT``: ``http://host:port`` or ``https://host:port`` (scheme sets TLS).
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or ``MINIO_ACCESS_KEY`` / ``MINIO_SECRET_KEY``).
- ``SSLCORE_S3_REGION``: optional; when unset the client asks the server.
- ``SSLCORE_S3_INSECURE``: ``1``/``true`` skips TLS certificate verification.
- ``SSLCORE_S3_SECRET_FILE``: a YAML/JSON file, or a directory of files as a Kubernetes Secret
  mounts them, with keys ``endpoint``, ``access_key``, ``secret_key``, ``region``.
- ``SSLCORE_S3_MAX_ATTEMPTS`` (default 5) and ``SSLCORE_S3_BACKOFF_S`` (default 0.5): retries.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

import yaml

ENV_ENDPOINT = "SSLCORE_S3_ENDPOINT"
ENV_REGION = "SSLCORE_S3_REGION"
ENV_INSECURE = "SSLCORE_S3_INSECURE"
ENV_SECRET_FILE = "SSLCORE_S3_SECRET_FILE"
ENV_MAX_ATTEMPTS = "SSLCORE_S3_MAX_ATTEMPTS"
ENV_BACKOFF = "SSLCORE_S3_BACKOFF_S"
ACCESS_KEY_VARS = ("AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY")
SECRET_KEY_VARS = ("AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY")
SECRET_FILE_KEYS = ("endpoint", "access_key", "secret_key", "region")


@dataclass(frozen=True)
class S3Settings:
    """Everything needed to reach one S3 endpoint.

    Args:
        endpoint: ``host:port`` without scheme.
        secure: use TLS (``https``).
        access_key: access key id.
        secret_key: secret key; never shown by ``repr``/``str``.
        region: bucket region, or None to let the client ask the server.
        cert_check: verify TLS certificates.
        max_attempts: attempts per operation on transient errors (>= 1).
        backoff_s: first back-off delay in seconds; doubles after each failed attempt.
    """

    endpoint: str
    secure: bool
    access_key: str | None
    secret_key: str | None = field(repr=False)
    region: str | None = None
    cert_check: bool = True
    max_attempts: int = 5
    backoff_s: float = 0.5

    @property
    def url(self) -> str:
        """The endpoint as a URL, for error messages."""
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def __repr__(self) -> str:
        masked = "***" if self.secret_key else None
        return (
            f"S3Settings(endpoint={self.url!r}, access_key={self.access_key!r}, "
            f"secret_key={masked!r}, region={self.region!r}, cert_check={self.cert_check}, "
            f"max_attempts={self.max_attempts}, backoff_s={self.backoff_s})"
        )

    __str__ = __repr__


def read_secret_file(path: str | os.PathLike) -> dict[str, str]:
    """Read S3 credentials from a YAML/JSON file or a Kubernetes-Secret-style directory.

    Args:
        path: a file holding a mapping, or a directory with one file per key
            (``endpoint``, ``access_key``, ``secret_key``, ``region``).

    Returns:
        The known keys that were present, values stripped of surrounding whitespace.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a mapping.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{ENV_SECRET_FILE} points to {p}, which does not exist")
    if p.is_dir():
        return {k: (p / k).read_text().strip() for k in SECRET_FILE_KEYS if (p / k).is_file()}
    text = p.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"S3 secret file {p} must hold a mapping with keys {SECRET_FILE_KEYS}")
    return {k: str(data[k]).strip() for k in SECRET_FILE_KEYS if data.get(k) not in (None, "")}


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if env.get(name):
            return env[name]
    return None


def load_s3_settings(env: Mapping[str, str] | None = None) -> S3Settings:
    """Build :class:`S3Settings` from environment variables and an optional secret file.

    Args:
        env: the environment to read; defaults to ``os.environ``.

    Returns:
        The settings.

    Raises:
        ValueError: no endpoint is configured, or it is malformed, or a retry setting is invalid.

    Example:
        >>> s = load_s3_settings({"SSLCORE_S3_ENDPOINT": "http://127.0.0.1:9000"})
        >>> s.endpoint, s.secure
        ('127.0.0.1:9000', False)
    """
    env = os.environ if env is None else env
    secret = read_secret_file(env[ENV_SECRET_FILE]) if env.get(ENV_SECRET_FILE) else {}
    raw = env.get(ENV_ENDPOINT) or secret.get("endpoint")
    if not raw:
        raise ValueError(
            f"no S3 endpoint configured: set {ENV_ENDPOINT} (e.g. http://127.0.0.1:9000) "
            f"or {ENV_SECRET_FILE} with an 'endpoint' key"
        )
    parsed = urlparse(raw if "://" in raw else f"https://{raw}")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"{ENV_ENDPOINT}={raw!r}: expected http://host:port or https://host:port")
    max_attempts = int(env.get(ENV_MAX_ATTEMPTS, "5"))
    backoff_s = float(env.get(ENV_BACKOFF, "0.5"))
    if max_attempts < 1 or backoff_s < 0:
        raise ValueError(f"{ENV_MAX_ATTEMPTS} must be >= 1 and {ENV_BACKOFF} >= 0")
    insecure = env.get(ENV_INSECURE, "").strip().lower() in ("1", "true", "yes", "on")
    return S3Settings(
        endpoint=parsed.netloc,
        secure=parsed.scheme == "https",
        access_key=_first(env, ACCESS_KEY_VARS) or secret.get("access_key"),
        secret_key=_first(env, SECRET_KEY_VARS) or secret.get("secret_key"),
        region=env.get(ENV_REGION) or secret.get("region"),
        cert_check=not insecure,
        max_attempts=max_attempts,
        backoff_s=backoff_s,
    )
