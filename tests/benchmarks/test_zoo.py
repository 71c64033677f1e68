"""The method table runs each method's recipe, extracts, scores kNN, and survives a broken method."""

import json

import numpy as np
import pytest

from sslcore.benchmarks.zoo import format_zoo_table, run_zoo, trunk_label

pytestmark = pytest.mark.slow


def test_zoo_on_a_small_subset(fmnist_small, tmp_path):
    rows = run_zoo(fmnist_small, tmp_path, methods=["simclr", "no_such_method"], epochs=1)
    by_method = {r["method"]: r for r in rows}
    assert list(by_method) == ["simclr", "no_such_method", "random init (baseline)",
                               "raw pixels (baseline)"]
    simclr = by_method["simclr"]
    assert set(simclr["top1"]) == {"k200_T0.1", "k20_T0.07"}
    assert all(10.0 < v <= 100.0 for v in simclr["top1"].values())
    assert simclr["final_loss"] > 0 and simclr["train_seconds"] > 0
    assert "no_such_method" in by_method["no_such_method"]["error"]
    assert by_method["raw pixels (baseline)"]["top1"]["k20_T0.07"] > 40
    table = (tmp_path / "zoo.md").read_text()
    assert "train 512, test 256" in table and "| simclr | ResNet-18 x0.125 | 1 |" in table
    assert "failed:" in table and by_method["random init (baseline)"]["trunk"] == "ResNet-18 x0.125"
    assert json.loads((tmp_path / "zoo.json").read_text()) == rows


def test_baselines_only_scores_each_distinct_trunk_at_random_init(fmnist_small, tmp_path):
    """SimCLR's and BYOL's recipes use two trunks: two random-init rows, nothing trained."""
    rows = run_zoo(fmnist_small, tmp_path, methods=["simclr", "byol", "swav"], baselines_only=True)
    assert [(r["method"], r["trunk"]) for r in rows] == [
        ("random init (baseline)", "ResNet-18 x0.125"), ("random init (baseline)", "ResNet-18"),
        ("raw pixels (baseline)", "")]
    assert not (tmp_path / "simclr").exists() and not (tmp_path / "byol").exists()
    dims = [np.load(tmp_path / "random_init" / slug / "features" / "train_res5avg_features.npy").shape
            for slug in ("resnet-18_x0125", "resnet-18")]
    assert dims == [(512, 64), (512, 512)]


def test_table_format_and_trunk_labels():
    rows = [{"method": "m", "trunk": "ResNet-18", "epochs": 2,
             "top1": {"k200_T0.1": 71.234, "k20_T0.07": 70.0}, "train_seconds": 3.5,
             "final_loss": 1.23456}]
    assert "| m | ResNet-18 | 2 | 71.23 | 70.00 | 3.5 | 1.235 |" in format_zoo_table(rows, note="n")
    assert trunk_label({"NAME": "resnet", "RESNETS": {"DEPTH": 50, "WIDTH_MULTIPLIER": 1.0}}) == "ResNet-50"
    assert trunk_label({"NAME": "resnet", "RESNETS": {"DEPTH": 18, "WIDTH_MULTIPLIER": 0.125}}) \
        == "ResNet-18 x0.125"
    assert trunk_label({"NAME": "vision_transformer"}) == "vision_transformer"


def test_step_decays_are_compressed_into_the_budget_and_the_recipe_composes():
    from sslcore.benchmarks.zoo import schedule_overrides
    from sslcore.config.loader import compose_config

    recipe = "pretrain/npid/npid_fashion_mnist"  # multistep at epochs 30 and 40 of 50
    (override,) = schedule_overrides(recipe, 3)
    lr = compose_config([f"config={recipe}", "config.OPTIMIZER.num_epochs=3", override]
                        ).OPTIMIZER.param_schedulers.lr
    assert list(lr["milestones"]) == [1, 2] and list(lr["values"]) == [0.03, 0.003, 0.0003]
    (override,) = schedule_overrides(recipe, 10)
    assert "milestones: [6, 8]" in override
    assert schedule_overrides(recipe, 50) == [] and schedule_overrides(recipe, 1) == []
    assert schedule_overrides("pretrain/simclr/simclr_fashion_mnist_cpu", 3) == []  # cosine
