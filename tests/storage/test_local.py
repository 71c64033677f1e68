"""sslcore.storage on local paths: the same calls, no server."""

import os

import pytest

from sslcore import storage


def test_local_round_trip_dirs_and_bytes(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(1000))
    (src / "sub" / "b.txt").write_text("b")
    assert not storage.is_remote(src)
    out = storage.upload_dir(src, tmp_path / "dst")
    assert out == [str(tmp_path / "dst" / "a.bin"), str(tmp_path / "dst" / "sub" / "b.txt")]
    assert storage.list_uris(tmp_path / "dst") == out
    assert storage.list_uris(tmp_path / "missing") == []
    got = storage.download_dir(tmp_path / "dst", tmp_path / "back")
    assert (tmp_path / "back" / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    assert got[1] == tmp_path / "back" / "sub" / "b.txt"
    storage.write_bytes(tmp_path / "w" / "x", b"xyz")
    assert storage.read_bytes(tmp_path / "w" / "x") == b"xyz"
    assert storage.exists(tmp_path / "w" / "x") and not storage.exists(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        storage.upload_file(tmp_path / "nope", tmp_path / "y")


def test_copy_to_local_is_noop_for_paths(tmp_path):
    p = tmp_path / "model.torch"
    p.write_bytes(b"m")
    assert storage.copy_to_local(p, tmp_path / "cache") == p
    assert not (tmp_path / "cache").exists()


def test_local_latest_pointer(tmp_path):
    ckpts = tmp_path / "checkpoints"
    assert storage.read_latest_pointer(ckpts) is None
    with pytest.raises(FileNotFoundError):
        storage.write_latest_pointer(ckpts, "model_phase0.torch")
    with pytest.raises(ValueError):
        storage.write_latest_pointer(ckpts, "/abs.torch")
    ckpts.mkdir()
    for phase in range(3):
        (ckpts / f"model_phase{phase}.torch").write_bytes(b"w")
        storage.write_latest_pointer(ckpts, f"model_phase{phase}.torch")
        assert storage.read_latest_pointer(ckpts) == f"model_phase{phase}.torch"
    # Replaced by rename: no temporary files are left beside the pointer.
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "checkpoint.latest", "model_phase0.torch", "model_phase1.torch", "model_phase2.torch"]


def test_parse_s3_uri():
    assert storage.parse_s3_uri("s3://b/k/x.pt") == ("b", "k/x.pt")
    assert storage.parse_s3_uri("s3://b") == ("b", "")
    with pytest.raises(ValueError):
        storage.parse_s3_uri("s3:///k")
    with pytest.raises(ValueError):
        storage.parse_s3_uri("/tmp/x")
