"""The clusterfit component: python_func on small features, and one kfp.local run."""

from pathlib import Path

import numpy as np
import pytest
from kfp import dsl

from components.clusterfit import clusterfit
from sslcore.benchmarks.features import save_features
from sslcore.benchmarks.metrics import read_metrics
from tests.components.local_run import run_component_locally


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("clusterfit_features") / "features"
    centers = rng.normal(size=(3, 6)) * 4
    for split, num in (("train", 90), ("test", 30)):
        labels = np.arange(num) % 3
        save_features(root, split, "res5avg", centers[labels] + rng.normal(size=(num, 6)), labels, np.arange(num))
    return root


def _artifact(cls, path: Path):
    return cls(name=path.name, uri=str(path), metadata={})


def test_python_func_writes_labels_and_metrics(tmp_path, features_dir):
    labels, metrics = _artifact(dsl.Artifact, tmp_path / "labels"), _artifact(dsl.Metrics, tmp_path / "metrics")
    clusterfit.python_func(features=_artifact(dsl.Artifact, features_dir), labels=labels, metrics=metrics,
                           num_clusters=3, n_iter=10, layer="res5avg", seed=0)
    assert labels.metadata == {"labels_file": "dataset_train_N3_faiss_lbls.npy", "num_clusters": 3}
    assert np.load(tmp_path / "labels" / labels.metadata["labels_file"]).shape == (90,)
    written = read_metrics(tmp_path / "metrics")
    assert metrics.metadata == {f"{r['params']['split']}_{r['name']}": r["value"] for r in written["records"]}
    assert {"train_NMI", "train_ARI", "test_NMI", "train_inertia"} <= set(metrics.metadata)


@pytest.mark.slow
def test_runs_through_kfp_local(tmp_path, features_dir):
    out = run_component_locally(clusterfit, tmp_path, artifacts={"features": (dsl.Artifact, features_dir)},
                                num_clusters=3, n_iter=10, layer="res5avg", seed=0)
    assert sorted(p.name for p in Path(out["labels"]).iterdir()) == [
        "dataset_test_N3_faiss_lbls.npy", "dataset_test_N3_faiss_stats.json", "dataset_train_N3_faiss_centroids.npy",
        "dataset_train_N3_faiss_lbls.npy", "dataset_train_N3_faiss_stats.json"]
    written = read_metrics(out["metrics"])
    assert sum(written["cluster_sizes"]["train"]) == 90
