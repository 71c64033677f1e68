"""ssl_benchmark through kfp.local with its artifacts in s3://: a checkpoint trained into a real S3
server on loopback is benchmarked, and the summary lands back in S3 where `submit` reads it."""

import json
from pathlib import Path

import pytest

from pipelines import runner
from sslcore import storage
from sslcore.engine.launcher import run_engine

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not FASHION_MNIST.exists(),
                    reason="needs the Debian package dataset-fashion-mnist (`make data`)")
def test_benchmark_of_an_s3_checkpoint_publishes_its_summary_to_s3(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("SSLCORE_CACHE_DIR", str(tmp_path / "cache"))
    run = "s3://runs/bench/quick"
    # quick_simclr's trunk (ResNet-18 x0.125, small stem) is the default extraction trunk
    checkpoint = run_engine(["config=pretrain/simclr/quick_simclr", f"config.CHECKPOINT.DIR={run}",
                             "config.OPTIMIZER.num_epochs=1",
                             "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"])
    assert str(checkpoint).startswith(run)

    results_uri = "s3://runs/bench/results"
    # the trunk benchmarks that ssl_pretrain_eval's local run covers are switched off here; the
    # two it leaves off by default (linear eval and finetuning) run for one epoch
    results = runner.run_pipeline("ssl_benchmark", tmp_path / "run", {
        "checkpoint_uri": checkpoint, "limit_train": 512, "limit_test": 256, "linear_epochs": 2,
        "extra_overrides": ["config.DATA.NUM_DATALOADER_WORKERS=0"], "results_uri": results_uri,
        "run_svm": False, "run_low_shot": False, "run_detection": False, "run_retrieval": False,
        "scenes_limit_train": 20, "scenes_limit_test": 10, "run_linear_eval": True,
        "linear_eval_epochs": 1, "run_finetune": True, "finetune_epochs": 1})

    published = json.loads(storage.read_bytes(f"{results_uri}/summary.json"))
    assert published["checkpoint_uri"] == checkpoint
    assert [(r["model"], r["benchmark"]) for r in published["rows"]] == [
        ("pretrained", b) for b in ("knn", "linear", "linear_eval", "finetune")]
    assert published["rows"] == results["rows"]
    top1 = {row["benchmark"]: [r["value"] for r in row["records"] if r["name"] == "top1"]
            for row in published["rows"]}
    assert all(10.0 < v <= 100.0 for b in ("knn", "linear") for v in top1[b])
    assert all(top1[b] and all(0.0 <= v <= 100.0 for v in top1[b]) for b in ("linear_eval", "finetune"))
