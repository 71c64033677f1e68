"""A run with s3:// end to end, against a real S3 server on loopback (rclone serve s3).

train (CHECKPOINT.DIR=s3://) -> a fresh pod resumes from the remote checkpoint -> extract from the
s3:// checkpoint into s3:// features -> kNN from s3:// features into s3:// metrics.
"""

import json
import shutil

import pytest
import torch

from sslcore import storage
from sslcore.cli import main as cli_main
from sslcore.engine.launcher import run_engine

pytestmark = pytest.mark.slow

QUICK = ["config=pretrain/simclr/quick_simclr", "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=true",
         "config.DATA.TRAIN.SYNTHETIC.NUM_SAMPLES=32"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SSLCORE_CACHE_DIR", str(root))
    return root


def test_train_resume_extract_knn_through_s3(s3_env, cache, fmnist_small, tmp_path):
    run = "s3://runs/e2e/simclr"
    final = run_engine(QUICK + [f"config.CHECKPOINT.DIR={run}", "config.OPTIMIZER.num_epochs=1"])
    assert final == f"{run}/model_final_checkpoint_phase0.torch"
    names = {u.rsplit("/", 1)[-1] for u in storage.list_uris(run)}
    assert {"model_final_checkpoint_phase0.torch", "checkpoint.latest", "stdout.json",
            "train_config.yaml"} <= names
    assert any("/tb_logs/" in u for u in storage.list_uris(run)), "TensorBoard events not uploaded"
    assert storage.read_latest_pointer(run) == "model_final_checkpoint_phase0.torch"

    # a fresh pod: nothing staged locally; AUTO_RESUME must come from the object store
    shutil.rmtree(cache)
    final = run_engine(QUICK + [f"config.CHECKPOINT.DIR={run}", "config.OPTIMIZER.num_epochs=2"])
    assert final == f"{run}/model_final_checkpoint_phase1.torch"
    log = [json.loads(line) for line in storage.read_bytes(f"{run}/stdout.json").splitlines()]
    assert [r["phase_idx"] for r in log] == [0, 0, 1, 1], "epoch 0 repeated or lost after resume"
    assert storage.read_latest_pointer(run) == "model_final_checkpoint_phase1.torch"
    ckpt = torch.load(storage.copy_to_local(final, tmp_path / "dl"), weights_only=True)
    assert ckpt["phase_idx"] == 1 and ckpt["config"]["CHECKPOINT"]["DIR"] == run

    features = "s3://runs/e2e/features"
    data = fmnist_small
    out = run_engine([
        "config=feature_extraction/extract_resnet_fashion_mnist",
        "config.MODEL.TRUNK.RESNETS.WIDTH_MULTIPLIER=0.125", "config.DATA.NUM_DATALOADER_WORKERS=0",
        *[f"config.DATA.{s}.{k}" for s in ("TRAIN", "TEST") for k in (
            f"DATA_PATHS=[{data}/{s.lower()}_images.npy]", f"LABEL_PATHS=[{data}/{s.lower()}_labels.npy]")],
        f"config.MODEL.WEIGHTS_INIT.PARAMS_FILE={final}",
        f"config.EXTRACT_FEATURES.OUTPUT_DIR={features}",
        f"config.CHECKPOINT.DIR={tmp_path / 'extract'}",
    ], "extract_features")
    assert out == features
    assert storage.exists(f"{features}/train_res5avg_features.npy")

    metrics = "s3://runs/e2e/knn"
    assert cli_main(["benchmark", "knn", "--features", features, "--out", metrics]) == 0
    result = json.loads(storage.read_bytes(f"{metrics}/metrics.json"))
    assert result["benchmark"] == "knn"
    assert 10.0 < result["records"][0]["value"] <= 100.0


def test_missing_bucket_fails_before_training(s3_env, cache, capsys):
    code = cli_main(["train", *QUICK, "config.CHECKPOINT.DIR=s3://no-such-bucket/run"])
    assert code == 2
    assert "no-such-bucket" in capsys.readouterr().err
