"""Shared fixtures: an isolated dataset catalog and a small real Fashion-MNIST subset."""

from pathlib import Path

import pytest

# the real S3 server on loopback (rclone serve s3), for storage, pipeline and k8s tests
from s3_server import free_port, make_s3_server, s3_env, s3_server, set_s3_env  # noqa: F401


@pytest.fixture(autouse=True)
def _isolated_catalog(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.sslcore catalog from tests."""
    catalog = tmp_path_factory.mktemp("catalog") / "dataset_catalog.json"
    monkeypatch.setenv("SSLCORE_DATASET_CATALOG", str(catalog))


@pytest.fixture(scope="session")
def fmnist_small(tmp_path_factory) -> Path:
    """Fashion-MNIST (from the Debian package): 512 train / 256 test images, both layouts."""
    from sslcore.data.fashion_mnist import prepare_fashion_mnist

    out = tmp_path_factory.mktemp("fmnist_small")
    mp = pytest.MonkeyPatch()
    mp.setenv("SSLCORE_DATASET_CATALOG", str(out / "catalog.json"))
    try:
        prepare_fashion_mnist(out, limit_train=512, limit_test=256)
    finally:
        mp.undo()
    return out
