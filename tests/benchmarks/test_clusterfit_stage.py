"""The ClusterFit stage: labels aligned with sample indices, sizes, NMI/ARI against sklearn."""

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from sslcore.benchmarks.clusterfit import cluster_agreement, run_clusterfit_stage
from sslcore.benchmarks.features import save_features
from sslcore.cli import main


def _blobs(path, *, num_train=240, num_test=60, dim=8, seed=0, shuffle=True):
    """Features of 4 well-separated classes, rows stored in a shuffled sample order."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, dim)) * 5
    for split, n in (("train", num_train), ("test", num_test)):
        labels = np.arange(n) % 4
        x = centers[labels] + rng.normal(size=(n, dim)) * 0.3
        order = rng.permutation(n) if shuffle else np.arange(n)
        save_features(path, split, "res5avg", x[order], labels[order], order)
    return path


def test_labels_follow_sample_indices_and_metrics_match_sklearn(tmp_path):
    feats = _blobs(tmp_path / "features")
    result = run_clusterfit_stage(feats, tmp_path / "labels", tmp_path / "metrics", num_clusters=4, n_iter=20,
                                  layer="res5avg", seed=0)
    rows = np.load(feats / "train_res5avg_features.npy")
    inds = np.load(feats / "train_res5avg_inds.npy")
    targets = np.load(feats / "train_res5avg_targets.npy")
    labels = np.load(tmp_path / "labels" / "dataset_train_N4_faiss_lbls.npy")
    centroids = np.load(tmp_path / "labels" / "dataset_train_N4_faiss_centroids.npy")
    # label of sample inds[i] is the nearest centroid of feature row i (L2-normalised as the engine does)
    normed = rows / (np.linalg.norm(rows, axis=1, keepdims=True) + 1e-5)
    nearest = ((normed[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(labels[inds], nearest)
    records = {(r["name"], r["params"]["split"]): r for r in result["records"]}
    sizes = result["cluster_sizes"]
    assert sum(sizes["train"]) == 240 and sum(sizes["test"]) == 60
    assert records[("smallest_cluster", "train")]["value"] == min(sizes["train"])
    assert records[("largest_cluster", "train")]["value"] == max(sizes["train"])
    assert records[("empty_clusters", "train")]["value"] == sizes["train"].count(0)
    by_sample = np.empty(240, int)
    by_sample[inds] = targets
    assert records[("NMI", "train")]["value"] == pytest.approx(100 * normalized_mutual_info_score(by_sample, labels))
    assert records[("ARI", "train")]["value"] == pytest.approx(100 * adjusted_rand_score(by_sample, labels))
    assert records[("NMI", "train")]["params"] == {"num_clusters": 4, "n_iter": 20, "layer": "res5avg", "seed": 0,
                                                   "backend": "faiss", "features_l2_normalized": True,
                                                   "split": "train"}
    test_labels = np.load(tmp_path / "labels" / "dataset_test_N4_faiss_lbls.npy")
    assert np.bincount(test_labels, minlength=4).tolist() == sizes["test"]
    stats = json.loads((tmp_path / "labels" / "dataset_train_N4_faiss_stats.json").read_text())
    assert stats["cluster_sizes"] == sizes["train"]
    assert json.loads((tmp_path / "metrics" / "metrics.json").read_text())["benchmark"] == "clusterfit"


def test_agreement_is_skipped_for_multi_label_targets_and_errors_are_clear(tmp_path):
    assert cluster_agreement(np.zeros(4, int), np.ones((4, 3), int)) is None
    feats = _blobs(tmp_path / "features", shuffle=False)
    with pytest.raises(ValueError, match="NUM_CLUSTERS"):
        run_clusterfit_stage(feats, tmp_path / "labels", num_clusters=1000, layer="res5avg")
    with pytest.raises(FileNotFoundError, match="conv1"):
        run_clusterfit_stage(feats, tmp_path / "labels", num_clusters=4, layer="conv1")


def test_cli_runs_the_stage(tmp_path, capsys):
    feats = _blobs(tmp_path / "features")
    assert main(["benchmark", "clusterfit", "--features", str(feats), "--out", str(tmp_path / "out"),
                 "--num-clusters", "4", "--n-iter", "5"]) == 0
    assert "NMI" in capsys.readouterr().out
    assert (tmp_path / "out" / "metrics.json").is_file()
    assert (tmp_path / "out" / "dataset_train_N4_faiss_lbls.npy").is_file()
