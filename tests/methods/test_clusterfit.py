"""ClusterFit: k-means labels (faiss) aligned to samples and seeded, the extract_cluster engine and
CLI, the recipes, and a tiny end-to-end run: features -> clusters -> 2 epochs on the labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from sslcore import cli
from sslcore.benchmarks.features import save_features
from sslcore.config import compose_config
from sslcore.config.infer import infer_config
from sslcore.engine.clusterfit import (
    assign_to_centroids,
    cluster_features,
    l2_normalize,
    labels_by_sample,
)
from sslcore.engine.launcher import run_engine
from sslcore.optim.schedulers import build_param_scheduler

RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "sslcore/config/pretrain/"
                                  "clusterfit").glob("*.yaml"))
STEP1 = "config=pretrain/clusterfit/quick_cluster_features"
STEP2 = "config=pretrain/clusterfit/quick_clusterfit"


def _blobs(n_per=50, k=5, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * 5
    truth = np.repeat(np.arange(k), n_per)
    return (centers[truth] + rng.normal(size=(len(truth), dim)) * 0.1).astype(np.float32), truth


def test_kmeans_labels_are_nearest_centroids_with_exact_statistics():
    feats = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32)
    result = cluster_features(feats, 7, n_iter=10, seed=3)
    assert result.labels.shape == (300,) and result.labels.dtype == np.int64
    assert result.centroids.shape == (7, 8) and result.sizes.sum() == 300
    x = feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-5)
    d2 = ((x[:, None, :] - result.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(result.labels, d2.argmin(1))
    assert result.inertia == pytest.approx(d2.min(1).sum(), rel=1e-4)
    assert len(result.objective) == 10 and result.objective[-1] <= result.objective[0]


def test_kmeans_is_deterministic_with_its_seed_and_finds_clear_clusters():
    feats, truth = _blobs()
    a = cluster_features(feats, 5, n_iter=20, seed=0)
    b = cluster_features(feats, 5, n_iter=20, seed=0)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    # two opposite blobs (far apart after L2 normalisation) are found from any start
    rng = np.random.default_rng(5)
    centre = rng.normal(size=16)
    two = np.concatenate([centre + rng.normal(size=(40, 16)) * 0.1,
                          -centre + rng.normal(size=(40, 16)) * 0.1]).astype(np.float32)
    for seed in range(5):
        labels = cluster_features(two, 2, n_iter=10, seed=seed).labels
        assert len(set(labels[:40])) == len(set(labels[40:])) == 1 and labels[0] != labels[40]
    other = np.random.default_rng(2).normal(size=(400, 8)).astype(np.float32)
    runs = [cluster_features(other, 20, n_iter=5, seed=s).labels for s in (0, 0, 1)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])  # the seed matters


def test_assignment_and_sample_order():
    feats, _ = _blobs()
    result = cluster_features(feats, 5, n_iter=20, seed=0)
    labels, dist = assign_to_centroids(feats[::-1], result.centroids)
    np.testing.assert_array_equal(labels, result.labels[::-1])
    perm = np.random.default_rng(0).permutation(len(feats))
    np.testing.assert_array_equal(labels_by_sample(perm, result.labels[perm], "x"), result.labels)
    with pytest.raises(ValueError, match="cover samples"):
        labels_by_sample(np.array([0, 2]), np.array([1, 1]), "train features")
    with pytest.raises(ValueError, match="NUM_CLUSTERS=9 must be in"):
        cluster_features(feats[:8], 9)
    assert np.allclose(np.linalg.norm(l2_normalize(feats), axis=1), 1.0, atol=1e-4)


def test_engine_reads_existing_features_and_writes_vissl_named_files(tmp_path):
    feats, truth = _blobs(n_per=20, k=4)
    order = np.random.default_rng(0).permutation(len(feats))  # rows need not be in sample order
    expected = np.empty(80, dtype=np.int64)
    expected[order] = cluster_features(feats[order], 4, n_iter=50, seed=0).labels
    save_features(tmp_path / "f", "train", "res5", feats[order], truth[order], order)
    save_features(tmp_path / "f", "test", "res5", feats[:10], truth[:10], np.arange(10))
    out = tmp_path / "out"
    path = run_engine([STEP1, "config.CLUSTERFIT.FEATURES.EXTRACT=false",
                       f"config.CLUSTERFIT.FEATURES.PATH={tmp_path / 'f'}",
                       "config.CLUSTERFIT.FEATURES.LAYER_NAME=res5", "config.CLUSTERFIT.NUM_CLUSTERS=4",
                       "config.CLUSTERFIT.FEATURES.DATASET_NAME=blobs",
                       f"config.CLUSTERFIT.OUTPUT_DIR={out}", f"config.CHECKPOINT.DIR={tmp_path}"],
                      engine_name="extract_cluster")
    assert path == out / "blobs_train_N4_faiss_lbls.npy"
    labels = np.load(path)
    np.testing.assert_array_equal(labels, expected)  # row i = cluster of sample i
    stats = json.loads((out / "blobs_train_N4_faiss_stats.json").read_text())
    assert stats["cluster_sizes"] == np.bincount(labels, minlength=4).tolist()
    assert stats["num_samples"] == 80 and stats["layer"] == "res5" and stats["inertia"] >= 0
    assert np.load(out / "blobs_train_N4_faiss_centroids.npy").shape == (4, 16)
    np.testing.assert_array_equal(np.load(out / "blobs_test_N4_faiss_lbls.npy"), labels[:10])
    assert (tmp_path / "cluster_config.yaml").exists()


def test_engine_errors_name_the_fix(tmp_path):
    common = [STEP1, f"config.CHECKPOINT.DIR={tmp_path}"]
    with pytest.raises(ValueError, match="DATA_LIMIT=-1"):
        run_engine(common + ["config.DATA.TRAIN.DATA_LIMIT=10"], engine_name="extract_cluster")
    with pytest.raises(FileNotFoundError, match="run feature extraction first"):
        run_engine(common + ["config.CLUSTERFIT.FEATURES.EXTRACT=false",
                             f"config.CLUSTERFIT.FEATURES.PATH={tmp_path / 'none'}"],
                   engine_name="extract_cluster")


def test_cli_subcommand_runs_step_one(tmp_path, capsys):
    assert cli.main(["clusterfit", STEP1, f"config.CHECKPOINT.DIR={tmp_path}"]) == 0
    labels = np.load(tmp_path / "synthetic_train_N4_faiss_lbls.npy")
    assert labels.shape == (64,) and labels.min() >= 0 and labels.max() < 4
    assert str(tmp_path / "synthetic_train_N4_faiss_lbls.npy") in capsys.readouterr().out


def _records(ckpt_dir):
    return [json.loads(line) for line in (ckpt_dir / "stdout.json").read_text().splitlines()]


def test_end_to_end_cluster_then_train_on_the_labels(fmnist_small, tmp_path):
    """Random-init features of 512 Fashion-MNIST images -> 4 clusters -> 2 epochs from scratch."""
    data = ["config.DATA.TRAIN.DATA_SOURCES=[disk_filelist]",
            f"config.DATA.TRAIN.DATA_PATHS=[{fmnist_small}/train_images.npy]"]
    step1 = [STEP1, *data, "config.DATA.TEST.DATA_SOURCES=[disk_filelist]",
             f"config.DATA.TEST.DATA_PATHS=[{fmnist_small}/test_images.npy]",
             "config.DATA.TEST.LABEL_TYPE=sample_index",
             "config.DATA.TEST.TRANSFORMS=[{name: ToTensor}]"]
    first = run_engine(step1 + [f"config.CHECKPOINT.DIR={tmp_path / 's1'}"], "extract_cluster")
    labels = np.load(first)
    assert labels.shape == (512,)  # one label per training image, row i = sample i
    assert np.load(tmp_path / "s1" / "synthetic_test_N4_faiss_lbls.npy").shape == (256,)
    sizes = json.loads((tmp_path / "s1" / "synthetic_train_N4_faiss_stats.json").read_text())
    assert sum(sizes["cluster_sizes"]) == 512 and sizes["empty_clusters"] == 0
    again = run_engine(step1 + [f"config.CHECKPOINT.DIR={tmp_path / 's1b'}"], "extract_cluster")
    np.testing.assert_array_equal(np.load(again), labels)  # extraction + k-means are seeded

    run_engine([STEP2, *data, f"config.DATA.TRAIN.LABEL_PATHS=[{first}]",
                "config.DATA.TRAIN.DATA_LIMIT=256", "config.DATA.TRAIN.BATCHSIZE_PER_REPLICA=32",
                f"config.CHECKPOINT.DIR={tmp_path / 's2'}"])
    losses = [r["loss"] for r in _records(tmp_path / "s2")]
    assert len(losses) == 16 and np.isfinite(losses).all()
    first_mean, last_mean = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last_mean < first_mean - 0.2, losses


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_and_resolves(recipe):
    cfg = compose_config([f"config=pretrain/clusterfit/{recipe}"])
    engine = "extract_cluster" if "cluster_features" in recipe else "train"
    resolved, _ = infer_config(cfg, world_size=8, local_world_size=8, cuda_available=True,
                               engine_name=engine)
    if engine == "train":
        lr = OmegaConf.to_container(resolved.OPTIMIZER.param_schedulers.lr)
        assert build_param_scheduler(lr, int(resolved.OPTIMIZER.num_epochs))(0.5) > 0
        assert resolved.DATA.TRAIN.LABEL_SOURCES == ["disk_filelist"]
        assert resolved.DATA.TRAIN.LABEL_PATHS[0].endswith("_faiss_lbls.npy")


def test_step_two_head_matches_step_one_clusters():
    pairs = [("cluster_features_resnet_8gpu_imagenet", "clusterfit_resnet_8gpu_imagenet"),
             ("cluster_features_fashion_mnist", "clusterfit_fashion_mnist"),
             ("quick_cluster_features", "quick_clusterfit")]
    for one, two in pairs:
        c1 = compose_config([f"config=pretrain/clusterfit/{one}"])
        c2 = compose_config([f"config=pretrain/clusterfit/{two}"])
        k = c1.CLUSTERFIT.NUM_CLUSTERS
        assert c2.MODEL.HEAD.PARAMS[-1][1]["dims"][-1] == k
        name = c1.CLUSTERFIT.FEATURES.DATASET_NAME
        assert Path(c2.DATA.TRAIN.LABEL_PATHS[0]).name == f"{name}_train_N{k}_faiss_lbls.npy"
    vissl = compose_config(["config=pretrain/clusterfit/cluster_features_resnet_8gpu_imagenet"])
    assert (vissl.CLUSTERFIT.NUM_CLUSTERS, vissl.CLUSTERFIT.N_ITER) == (16000, 50)
    assert vissl.CLUSTERFIT.FEATURES.LAYER_NAME == "res5"
