"""sslcore.storage against a real S3 server (rclone serve s3 on loopback)."""

from __future__ import annotations

import io
import os
import re
import threading
import time

import pytest

from sslcore import storage
from sslcore.storage import s3

BUCKET = "runs"  # created by the s3_server fixture


def _random_file(path, size):
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def test_upload_download_round_trip(s3_env, tmp_path):
    data = _random_file(tmp_path / "a.bin", 100_000)
    uri = f"s3://{BUCKET}/rt/a.bin"
    storage.upload_file(tmp_path / "a.bin", uri)
    assert storage.exists(uri)
    assert not storage.exists(f"s3://{BUCKET}/rt/missing.bin")
    storage.download_file(uri, tmp_path / "out" / "a.bin")
    assert (tmp_path / "out" / "a.bin").read_bytes() == data
    assert storage.read_bytes(uri) == data
    # Objects land as files under the server's bucket directory, browsable as-is.
    assert (s3_env.root / BUCKET / "rt" / "a.bin").read_bytes() == data


def test_multipart_upload_larger_than_part_size(s3_env, tmp_path):
    data = _random_file(tmp_path / "big.bin", 12 * 1024 * 1024)
    uri = f"s3://{BUCKET}/mp/big.bin"
    client = s3.get_client()
    trace = io.StringIO()
    client.trace_on(trace)
    try:
        storage.upload_file(tmp_path / "big.bin", uri, part_size=5 * 1024 * 1024)
    finally:
        client.trace_off()
    # Three parts (5 + 5 + 2 MiB) went to the server as separate UploadPart requests.
    parts = set(re.findall(r"PUT /[^ ]*partNumber=(\d+)", trace.getvalue()))
    assert parts == {"1", "2", "3"}
    assert client.stat_object(BUCKET, "mp/big.bin").size == len(data)
    storage.download_file(uri, tmp_path / "big.out")
    assert (tmp_path / "big.out").read_bytes() == data


def test_part_size_below_minimum_is_rejected(s3_env, tmp_path):
    (tmp_path / "x").write_bytes(b"x")
    with pytest.raises(ValueError, match="5 MiB"):
        storage.upload_file(tmp_path / "x", f"s3://{BUCKET}/x", part_size=1024)


def test_dirs_list_bytes_and_copy_to_local(s3_env, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.yaml").write_text("a: 1\n")
    (src / "sub" / "f.npy").write_bytes(b"\x00\x01")
    prefix = f"s3://{BUCKET}/runs/r1"
    uploaded = storage.upload_dir(src, prefix)
    assert uploaded == [f"{prefix}/config.yaml", f"{prefix}/sub/f.npy"]
    assert storage.list_uris(prefix + "/") == uploaded
    got = storage.download_dir(prefix, tmp_path / "dst")
    assert got == [tmp_path / "dst" / "config.yaml", tmp_path / "dst" / "sub" / "f.npy"]
    assert (tmp_path / "dst" / "sub" / "f.npy").read_bytes() == b"\x00\x01"

    storage.write_bytes(f"{prefix}/note.txt", b"hello")
    assert storage.read_bytes(f"{prefix}/note.txt") == b"hello"
    local = storage.copy_to_local(f"{prefix}/config.yaml", tmp_path / "cache")
    assert local.name == "config.yaml" and local.read_text() == "a: 1\n"
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{prefix}/nope")


def test_latest_pointer_on_s3(s3_env, tmp_path):
    prefix = f"s3://{BUCKET}/runs/r2/checkpoints"
    assert storage.read_latest_pointer(prefix) is None
    with pytest.raises(FileNotFoundError):
        storage.write_latest_pointer(prefix, "model_phase1.torch")  # not uploaded yet
    assert storage.read_latest_pointer(prefix) is None
    for phase in (1, 2):
        (tmp_path / "ckpt").write_bytes(b"w" * phase)
        storage.upload_file(tmp_path / "ckpt", f"{prefix}/model_phase{phase}.torch")
        pointer = storage.write_latest_pointer(prefix, f"model_phase{phase}.torch")
        assert pointer == f"{prefix}/checkpoint.latest"
        assert storage.read_latest_pointer(prefix) == f"model_phase{phase}.torch"


def test_wrong_credentials_fail_fast_with_clear_error(s3_server, set_s3_env, tmp_path):
    set_s3_env(s3_server.endpoint, key="wrong", secret="wrong-secret")
    (tmp_path / "a").write_bytes(b"a")
    start = time.monotonic()
    with pytest.raises(storage.StorageAuthError, match="AWS_ACCESS_KEY_ID") as info:
        storage.upload_file(tmp_path / "a", f"s3://{BUCKET}/a")
    assert time.monotonic() - start < 3
    assert "wrong-secret" not in str(info.value)


def test_missing_bucket_gives_clear_error(s3_env, tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    with pytest.raises(storage.BucketNotFoundError, match="no-such-bucket.*mc mb"):
        storage.upload_file(tmp_path / "a", "s3://no-such-bucket/a")
    with pytest.raises(storage.BucketNotFoundError):
        storage.list_uris("s3://no-such-bucket/")


def test_unreachable_endpoint_gives_up_after_bounded_attempts(set_s3_env, monkeypatch, free_port):
    port = free_port  # free port, nothing listening
    set_s3_env(f"http://127.0.0.1:{port}")
    monkeypatch.setenv("SSLCORE_S3_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("SSLCORE_S3_BACKOFF_S", "0.05")
    with pytest.raises(storage.StorageUnavailableError, match=f"127.0.0.1:{port}.*3 times"):
        storage.read_bytes(f"s3://{BUCKET}/a")


def test_upload_retries_until_server_comes_back(tmp_path, set_s3_env, monkeypatch, make_s3_server):
    (tmp_path / "root" / BUCKET).mkdir(parents=True)
    server = make_s3_server(tmp_path / "root")
    server.start()
    try:
        set_s3_env(server.endpoint)
        monkeypatch.setenv("SSLCORE_S3_MAX_ATTEMPTS", "8")
        monkeypatch.setenv("SSLCORE_S3_BACKOFF_S", "0.2")  # window: 0.2+0.4+...+12.8 s
        data = _random_file(tmp_path / "ckpt.bin", 1_000_000)
        storage.upload_file(tmp_path / "ckpt.bin", f"s3://{BUCKET}/before.bin")
        server.stop()

        errors: list[BaseException] = []

        def _upload():
            try:
                storage.upload_file(tmp_path / "ckpt.bin", f"s3://{BUCKET}/after.bin")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=_upload)
        thread.start()
        time.sleep(1.0)  # several attempts fail with connection refused
        server.start()  # same port
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert errors == []
        assert storage.read_bytes(f"s3://{BUCKET}/after.bin") == data
    finally:
        server.stop()
