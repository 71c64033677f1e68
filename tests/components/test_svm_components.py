"""The svm and low_shot components: python_func on small features, and one kfp.local run each."""

import json
from pathlib import Path

import numpy as np
import pytest
from kfp import dsl

from components.low_shot import low_shot
from components.svm import svm
from sslcore.benchmarks.features import save_features
from sslcore.benchmarks.metrics import read_metrics
from tests.components.local_run import run_component_locally

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory) -> Path:
    """60 train / 30 test rows, 3 classes, VOC flags with a few difficult ones, layers res4 and res5avg."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("svm_features") / "features"
    for split, num in (("train", 60), ("test", 30)):
        labels = np.arange(num) % 3
        flags = np.where(np.eye(3)[labels] == 1, 1, -1)
        flags[rng.random(flags.shape) < 0.05] = 0
        flags[:3] = np.where(np.eye(3) == 1, 1, -1)  # every class keeps a positive
        x = rng.normal(size=(num, 6)) + np.eye(3, 6)[labels] * 2
        for layer in ("res4", "res5avg"):
            save_features(root, split, layer, x, flags, np.arange(num))
    return root


def _artifact(cls, path: Path):
    return cls(name=path.name, uri=str(path), metadata={})


def test_svm_component_writes_results_and_logs_map_per_layer(tmp_path, features_dir):
    metrics = _artifact(dsl.Metrics, tmp_path / "metrics")
    svm.python_func(features=_artifact(dsl.Artifact, features_dir), metrics=metrics, layers=["res4", "res5avg"])
    written = read_metrics(tmp_path / "metrics")
    assert written["benchmark"] == "svm"
    assert {r["layer"]: r["value"] for r in written["records"]} == {
        "res4": metrics.metadata["mAP_res4"], "res5avg": metrics.metadata["mAP_res5avg"]}
    assert set(json.loads((tmp_path / "metrics" / "cv_ap.json").read_text())) == {"res4", "res5avg"}


def test_low_shot_component_logs_one_metric_per_k_and_stat(tmp_path, features_dir):
    metrics = _artifact(dsl.Metrics, tmp_path / "metrics")
    low_shot.python_func(features=_artifact(dsl.Artifact, features_dir), metrics=metrics, layer="res5avg",
                         k_values=[1, 4], num_samples=2)
    written = read_metrics(tmp_path / "metrics")
    expected = {f"mAP_k{r['params']['k']}_{r['params']['stat']}": r["value"] for r in written["records"]}
    assert len(expected) == 8 and metrics.metadata == expected
    assert (tmp_path / "metrics" / "low_shot_samples.json").is_file()


@pytest.mark.slow
def test_svm_and_low_shot_run_through_kfp_local(tmp_path, features_dir):
    out = run_component_locally(svm, tmp_path / "svm", artifacts={"features": (dsl.Artifact, features_dir)},
                                layers=["res5avg"])
    svm_metrics = read_metrics(out["metrics"])
    assert [r["layer"] for r in svm_metrics["records"]] == ["res5avg"]
    assert (Path(out["metrics"]) / "per_class_ap.json").is_file()
    out = run_component_locally(low_shot, tmp_path / "low_shot", artifacts={"features": (dsl.Artifact, features_dir)},
                                layer="res5avg", k_values=[2], num_samples=2)
    records = read_metrics(out["metrics"])["records"]
    assert sorted(r["params"]["stat"] for r in records) == ["max", "mean", "min", "std"]
