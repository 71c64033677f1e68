"""The clusterfit and convert pipelines end to end through kfp.local, on a checkpoint trained here."""

import json
from pathlib import Path

import pytest
import torch

from pipelines import runner
from sslcore.convert.torchvision import build_torchvision_resnet
from sslcore.engine.launcher import run_engine

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_data = pytest.mark.skipif(not FASHION_MNIST.exists(),
                                reason="needs the Debian package dataset-fashion-mnist (`make data`)")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """quick_simclr's thin trunk (ResNet-18 x0.125, small stem: the default extraction trunk)."""
    run = tmp_path_factory.mktemp("quick")
    return str(run_engine(["config=pretrain/simclr/quick_simclr", f"config.CHECKPOINT.DIR={run}",
                           "config.OPTIMIZER.num_epochs=1",
                           "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"]))


@pytest.mark.slow
@pytest.mark.timeout(900)
@needs_data
def test_clusterfit_pipeline_trains_a_new_trunk_on_cluster_labels(checkpoint, tmp_path):
    results = runner.run_pipeline("clusterfit", tmp_path / "run", {
        "checkpoint_uri": checkpoint, "limit_train": 300, "limit_test": 100, "num_clusters": 8,
        "n_iter": 10, "linear_epochs": 2,
        "extra_overrides": ["config.DATA.NUM_DATALOADER_WORKERS=0"],
        "clusterfit_overrides": ["config.MODEL.HEAD.PARAMS=[[mlp,{dims:[64,8]}]]",
                                 "config.OPTIMIZER.num_epochs=1",
                                 "config.OPTIMIZER.param_schedulers.lr={name: constant, value: 0.1}",
                                 "config.DATA.NUM_DATALOADER_WORKERS=0",
                                 "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"]})
    rows = {r["benchmark"]: r for r in results["rows"]}
    assert set(rows) == {"knn", "linear", "clusterfit"}
    stats = {(r["name"], r["params"].get("split")): r["value"] for r in rows["clusterfit"]["records"]}
    assert stats[("largest_cluster", "train")] >= 300 / 8
    run_root = Path(results["pipeline_root"])
    (labels,) = run_root.glob("*/clusterfit*/labels/*_train_*_lbls.npy")
    trained_config = next(run_root.glob("*/pretrain/model/train_config.yaml")).read_text()
    assert labels.name in trained_config, "step 2 trained on step 1's labels"
    assert "clusterfit: details" in Path(results["report_html"]).read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_convert_pipeline_writes_a_torchvision_state_dict(checkpoint, tmp_path):
    results = runner.run_pipeline("convert", tmp_path / "run", {"checkpoint_uri": checkpoint})
    converted_dir = Path(results["outputs"]["converted"])
    (converted,) = converted_dir.parent.glob("converted/*.pth") if converted_dir.is_dir() else [
        converted_dir]
    state = torch.load(converted, map_location="cpu", weights_only=True)
    model = build_torchvision_resnet(depth=18, width_multiplier=0.125, stem="small")
    model.fc = torch.nn.Identity()
    model.load_state_dict(state, strict=True)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["pipeline"] == "convert"
