"""The data copy stage from object storage (a real S3 server on loopback) and from an HTTP archive
(a real HTTP server on loopback): downloaded, verified against the manifest, no-op when current."""

from __future__ import annotations

import functools
import http.server
import tarfile
import threading

import numpy as np
import pytest
from data_helpers import SMALL_TRAIN, needs_fashion_mnist

from sslcore import storage
from sslcore.data.manifest import verify_dataset
from sslcore.data.prepare import prepare_dataset

pytestmark = needs_fashion_mnist


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_copy_from_s3_verifies_and_is_a_no_op_the_second_time(s3_env, small_fmnist, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv("SSLCORE_CACHE_DIR", str(tmp_path / "cache"))
    storage.upload_dir(small_fmnist, "s3://runs/datasets/fmnist-small")
    out = tmp_path / "copy"
    manifest = prepare_dataset("s3://runs/datasets/fmnist-small/", out)
    assert manifest == verify_dataset(small_fmnist) | {"content": manifest["content"]}
    assert np.load(out / "train_labels.npy").shape == (SMALL_TRAIN,)
    before = _mtimes(out)
    prepare_dataset("s3://runs/datasets/fmnist-small", out)
    assert _mtimes(out) == before
    with pytest.raises(FileNotFoundError, match="nothing under"):
        prepare_dataset("s3://runs/datasets/missing", tmp_path / "other")


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_copy_from_an_http_archive(http_root, small_fmnist, tmp_path, monkeypatch):
    monkeypatch.setenv("SSLCORE_CACHE_DIR", str(tmp_path / "cache"))
    root, url = http_root
    with tarfile.open(root / "fmnist-small.tar.gz", "w:gz") as tf:
        tf.add(small_fmnist, arcname="fmnist-small")
    out = tmp_path / "copy"
    manifest = prepare_dataset(f"{url}/fmnist-small.tar.gz", out)
    assert manifest["listing_digest"] == verify_dataset(small_fmnist)["listing_digest"]
    assert len(list((out / "train").glob("*/*.png"))) == SMALL_TRAIN


def test_an_archive_escaping_its_directory_is_refused(http_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SSLCORE_CACHE_DIR", str(tmp_path / "cache"))
    root, url = http_root
    evil = tmp_path / "evil.txt"
    evil.write_text("x")
    with tarfile.open(root / "evil.tar", "w") as tf:
        tf.add(evil, arcname="../evil.txt")
    with pytest.raises(Exception, match="outside|escape|evil"):
        prepare_dataset(f"{url}/evil.tar", tmp_path / "copy")
    assert not (tmp_path / "cache" / "evil.txt").exists()
