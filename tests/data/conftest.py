"""Shared fixtures for the data-layer tests: a small prepared Fashion-MNIST and config builders.

Every test runs with HOME and $SSLCORE_DATASET_CATALOG pointed into a temporary directory, so no
test ever reads or writes the real user catalog.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from data_helpers import SMALL_TEST, SMALL_TRAIN, has_fashion_mnist

from sslcore.data.fashion_mnist import prepare_fashion_mnist


@pytest.fixture(scope="session", autouse=True)
def _private_catalog(tmp_path_factory: pytest.TempPathFactory):
    """Session-wide: the catalog and HOME live in a temporary directory."""
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("HOME", "SSLCORE_DATASET_CATALOG")}
    os.environ["HOME"] = str(home)
    os.environ["SSLCORE_DATASET_CATALOG"] = str(home / "session_catalog.json")
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture()
def catalog_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty catalog file for one test."""
    path = tmp_path / "catalog" / "dataset_catalog.json"
    monkeypatch.setenv("SSLCORE_DATASET_CATALOG", str(path))
    return path


@pytest.fixture(scope="session")
def small_fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fashion-MNIST with 200 train / 100 test images (class-stratified), both layouts."""
    if not has_fashion_mnist():
        pytest.skip("Fashion-MNIST IDX files missing: apt-get install dataset-fashion-mnist")
    return prepare_fashion_mnist(tmp_path_factory.mktemp("fmnist") / "fmnist",
                                 limit_train=SMALL_TRAIN, limit_test=SMALL_TEST)
