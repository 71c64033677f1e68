"""Weighted kNN (NPID / VISSL protocol) against a brute-force numpy reference, and the benchmark run."""

import logging

import numpy as np
import pytest

from sslcore.benchmarks.features import save_features
from sslcore.benchmarks.knn import (
    knn_accuracy,
    knn_classify,
    knn_settings_from_config,
    run_knn_benchmark,
    search_neighbors,
    vote,
)
from sslcore.benchmarks.metrics import read_metrics, topk_accuracy


def reference_scores(train, labels, test, k, temperature, num_classes, normalize=True):
    """Plain numpy weighted kNN: full similarity matrix, top-k, exp(sim/T) summed per class."""
    train, test = train.astype(np.float64), test.astype(np.float64)
    if normalize:
        train = train / np.linalg.norm(train, axis=1, keepdims=True)
        test = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = test @ train.T
    scores = np.zeros((len(test), num_classes))
    for i in range(len(test)):
        nearest = np.argsort(-sims[i], kind="stable")[:k]
        for j in nearest:
            scores[i, labels[j]] += np.exp(sims[i, j] / temperature)
    return scores


def ranks(scores, top=5):
    return np.argsort(-scores, axis=1, kind="stable")[:, :top]


@pytest.fixture(scope="module")
def random_data():
    rng = np.random.default_rng(0)
    num_classes = 7
    train = rng.normal(size=(300, 16)).astype(np.float32)
    test = rng.normal(size=(40, 16)).astype(np.float32)
    return train, rng.integers(0, num_classes, 300), test, rng.integers(0, num_classes, 40), num_classes


@pytest.mark.parametrize("k", [1, 5, 20, 200])
@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5])
def test_scores_match_bruteforce_reference(random_data, k, temperature):
    train, train_y, test, test_y, num_classes = random_data
    ours = knn_classify(train, train_y, test, k=k, temperature=temperature, num_classes=num_classes)
    ref = reference_scores(train, train_y, test, k, temperature, num_classes)
    assert ours.shape == (40, num_classes)
    np.testing.assert_array_equal(ranks(ours)[:, 0], ranks(ref)[:, 0])
    np.testing.assert_array_equal(np.sort(ranks(ours), 1), np.sort(ranks(ref), 1))
    np.testing.assert_allclose(ours, ref, rtol=1e-4)
    ours_acc = knn_accuracy(train, train_y, test, test_y, k=k, temperature=temperature,
                            num_classes=num_classes)
    assert ours_acc == topk_accuracy(ref, test_y)


def test_memory_optimized_and_chunked_search_agree(random_data):
    train, train_y, test, _, num_classes = random_data
    plain = knn_classify(train, train_y, test, k=20, temperature=0.1, num_classes=num_classes)
    for options in ({"chunk_size": 7}, {"optimize_memory": True, "chunk_size": 37}):
        other = knn_classify(train, train_y, test, k=20, temperature=0.1, num_classes=num_classes, **options)
        np.testing.assert_allclose(other, plain, rtol=1e-5)


def test_search_returns_sorted_cosine_similarities(random_data):
    train, _, test, _, _ = random_data
    sims, idx = search_neighbors(train * 5.0, test, k=10)
    assert sims.shape == idx.shape == (40, 10) and idx.dtype == np.int64
    assert np.all(np.diff(sims, axis=1) <= 1e-6) and sims.max() <= 1.0 + 1e-5
    unit = train / np.linalg.norm(train, axis=1, keepdims=True)
    unit_test = test / np.linalg.norm(test, axis=1, keepdims=True)
    np.testing.assert_allclose(sims, np.take_along_axis(unit_test @ unit.T, idx, 1), atol=1e-5)


def test_separable_clusters_are_classified_perfectly():
    rng = np.random.default_rng(1)
    centers = np.eye(4, 32) * 10.0
    train_y, test_y = np.repeat(np.arange(4), 50), np.repeat(np.arange(4), 10)
    train = centers[train_y] + rng.normal(scale=0.5, size=(200, 32))
    test = centers[test_y] + rng.normal(scale=0.5, size=(40, 32))
    out = knn_accuracy(train, train_y, test, test_y, k=20, temperature=0.07)
    assert out == {"top1": 100.0, "top5": 100.0}


def test_unnormalised_inner_product_does_not_overflow():
    sims = np.array([[900.0, 899.0, 10.0]])
    scores = vote(sims, np.array([[1, 0, 0]]), temperature=0.1, num_classes=2)
    assert np.all(np.isfinite(scores)) and scores.argmax() == 1
    rng = np.random.default_rng(2)
    train, test = rng.normal(size=(50, 8)) * 30, rng.normal(size=(5, 8)) * 30
    labels = rng.integers(0, 3, 50)
    ours = knn_classify(train, labels, test, k=10, temperature=0.1, num_classes=3, l2_normalize=False)
    sims_full = test @ train.T
    expected = [np.bincount(labels[np.argsort(-row)[:10]], weights=np.exp((np.sort(row)[::-1][:10]
                            - row.max()) / 0.1), minlength=3).argmax() for row in sims_full]
    np.testing.assert_array_equal(ours.argmax(1), expected)


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 0}, r"k=0 must lie in \[1, 300\]"),
    ({"k": 301}, "lower TOPK"),
    ({"temperature": 0.0}, "T must be > 0"),
    ({"num_classes": 3}, r"\[0, 3\)"),
])
def test_classify_rejects_bad_arguments(random_data, kwargs, match):
    train, train_y, test, _, num_classes = random_data
    args = {"k": 5, "temperature": 0.1, "num_classes": num_classes, **kwargs}
    with pytest.raises(ValueError, match=match):
        knn_classify(train, train_y, test, **args)


def test_dimension_mismatch_is_explained(random_data):
    train, train_y, test, _, num_classes = random_data
    with pytest.raises(ValueError, match="same layer"):
        knn_classify(train, train_y, test[:, :8], k=5, temperature=0.1, num_classes=num_classes)


def _write_split_features(root, layer, train, train_y, test, test_y):
    save_features(root, "train", layer, train, train_y, np.arange(len(train)))
    save_features(root, "test", layer, test, test_y, np.arange(len(test)))


def test_run_benchmark_writes_metrics_per_setting(tmp_path, random_data):
    train, train_y, test, test_y, num_classes = random_data
    _write_split_features(tmp_path / "feats", "res5avg", train, train_y, test, test_y)
    result = run_knn_benchmark(tmp_path / "feats", tmp_path / "out")
    assert result == read_metrics(tmp_path / "out")
    assert result["benchmark"] == "knn" and result["sizes"]["res5avg"]["num_train"] == 300
    got = {(r["name"], r["params"]["k"], r["params"]["T"]): r["value"] for r in result["records"]}
    assert set(got) == {(m, k, t) for m in ("top1", "top5") for k, t in ((200, 0.1), (20, 0.07))}
    for k, temperature in ((200, 0.1), (20, 0.07)):
        ref = topk_accuracy(reference_scores(train, train_y, test, k, temperature, num_classes), test_y)
        assert got[("top1", k, temperature)] == ref["top1"]
        assert got[("top5", k, temperature)] == ref["top5"]
    assert all(r["unit"] == "%" and r["layer"] == "res5avg" for r in result["records"])


def test_run_benchmark_clips_k_to_train_size(tmp_path, caplog):
    rng = np.random.default_rng(3)
    _write_split_features(tmp_path, "pixels", rng.normal(size=(30, 4)), rng.integers(0, 2, 30),
                          rng.normal(size=(5, 4)), rng.integers(0, 2, 5))
    with caplog.at_level(logging.WARNING):
        result = run_knn_benchmark(tmp_path, tmp_path / "out", layer="pixels", settings=[(200, 0.1)])
    assert result["records"][0]["params"]["k"] == 30
    assert result["records"][0]["params"]["k_requested"] == 200
    assert "exceeds the 30 train samples" in caplog.text


def test_run_benchmark_several_layers_and_cuda_fallback(tmp_path, random_data, caplog):
    train, train_y, test, test_y, _ = random_data
    for layer in ("conv1", "res5avg"):
        _write_split_features(tmp_path, layer, train, train_y, test, test_y)
    with caplog.at_level(logging.INFO, logger="sslcore.benchmarks.knn"):
        result = run_knn_benchmark(tmp_path, tmp_path / "out", layer=["conv1", "res5avg"],
                                   settings=[(5, 0.1)], use_cuda=True)
    assert [r["layer"] for r in result["records"]] == ["conv1", "conv1", "res5avg", "res5avg"]
    import faiss

    if faiss.get_num_gpus() == 0:
        assert "using CPU" in caplog.text


def test_run_benchmark_rejects_multilabel_and_missing_layer(tmp_path, random_data):
    train, _, test, _, _ = random_data
    multi = np.eye(3, dtype=np.int64)[np.arange(300) % 3]
    _write_split_features(tmp_path, "res5avg", train, multi, test, multi[:40])
    with pytest.raises(ValueError, match="SVM benchmark"):
        run_knn_benchmark(tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="train: res5avg"):
        run_knn_benchmark(tmp_path, tmp_path / "out", layer="res4")


def test_settings_from_config():
    from sslcore.config.schema import defaults

    cfg = defaults()
    assert knn_settings_from_config(cfg) == [(200, 0.1), (20, 0.07)]
    cfg["NEAREST_NEIGHBOR"]["EXTRA_SETTINGS"] = [[200, 0.1], [10, 0.05]]
    assert knn_settings_from_config(cfg) == [(200, 0.1), (10, 0.05)]
    cfg["NEAREST_NEIGHBOR"]["EXTRA_SETTINGS"] = [[20]]
    with pytest.raises(ValueError, match=r"EXTRA_SETTINGS\[0\]"):
        knn_settings_from_config(cfg)
    cfg["NEAREST_NEIGHBOR"]["EXTRA_SETTINGS"] = [[20, -1.0]]
    with pytest.raises(ValueError, match="T must be > 0"):
        knn_settings_from_config(cfg)


def test_config_keys_use_vissl_names():
    from sslcore.config.loader import ConfigError, compose_config

    cfg = compose_config(["config.NEAREST_NEIGHBOR.TOPK=50", "config.NEAREST_NEIGHBOR.SIGMA=0.05"])
    assert knn_settings_from_config(cfg)[0] == (50, 0.05)
    with pytest.raises(ConfigError, match="NEAREST_NEIGHBOR.TOPK"):
        compose_config(["config.NEAREST_NEIGHBOR.TOP_K=50"])
