"""VOC07 SVM benchmark against a plain sklearn run of VISSL's protocol on the same data."""

import json

import numpy as np
import pytest
from sklearn.model_selection import cross_val_score
from sklearn.svm import LinearSVC

from sslcore.benchmarks.features import save_features
from sslcore.benchmarks.metrics import read_metrics
from sslcore.benchmarks.svm import (
    VOC07_COSTS,
    binary_targets,
    evaluate_svm_per_class,
    normalize_features,
    run_svm_benchmark,
    train_svm_per_class,
)

# the plain reference below lets liblinear warn when large costs stop at max_iter (the protocol's limit)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def multi_label_data(rng, num, dim=12, num_classes=3, difficult=0.1):
    """Features with a linear signal per class; flags 1 / -1, some set to 0 (difficult)."""
    x = rng.normal(size=(num, dim)).astype(np.float32)
    w = rng.normal(size=(dim, num_classes))
    logits = x @ w + rng.normal(scale=1.5, size=(num, num_classes))
    flags = np.where(logits > 0.8, 1, -1)
    flags[rng.random(flags.shape) < difficult] = 0
    return x, flags


def plain_sklearn_protocol(train_x, train_flags, test_x, test_flags, costs):
    """The protocol written out with sklearn's own CV helper, as VISSL's SVMTrainer calls it."""
    def norm(x):
        x = x.astype(np.float64)
        return x / (np.linalg.norm(x, axis=1)[:, None] + 1e-5)

    def svm(cost):
        return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, penalty="l2", loss="squared_hinge", dual=True,
                         max_iter=2000, tol=1e-4, intercept_scaling=1.0, random_state=0)

    train_x, test_x = norm(train_x), norm(test_x)
    chosen, aps, grid = [], [], []
    for c in range(train_flags.shape[1]):
        keep = train_flags[:, c] != 0
        x, y = train_x[keep], train_flags[keep, c]
        row = [cross_val_score(svm(cost), x, y, cv=3, scoring="average_precision").mean() for cost in costs]
        grid.append(row)
        best = costs[int(np.argmax(row))]
        chosen.append(best)
        scores = svm(best).fit(x, y).decision_function(test_x)
        keep_test = test_flags[:, c] != 0
        aps.append(sorted_ap(test_flags[keep_test, c] > 0, scores[keep_test]))
    return np.array(grid), chosen, np.array(aps)


def sorted_ap(is_positive, scores):
    """VOC interpolated AP by walking the ranking (scores here are continuous: no ties)."""
    order = np.argsort(-scores)
    hits = is_positive[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    interpolated = np.maximum.accumulate(precision[::-1])[::-1]
    return float(interpolated[hits].sum() / hits.sum())


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    train_x, train_flags = multi_label_data(rng, 240)
    test_x, test_flags = multi_label_data(rng, 150)
    return train_x, train_flags, test_x, test_flags


def test_matches_plain_sklearn_protocol(data):
    train_x, train_flags, test_x, test_flags = data
    costs = list(VOC07_COSTS)
    result = train_svm_per_class(train_x, train_flags, costs=costs, n_jobs=2)
    ap = evaluate_svm_per_class(result["models"], test_x, test_flags)
    grid, chosen, reference_ap = plain_sklearn_protocol(train_x, train_flags, test_x, test_flags, costs)
    assert result["cv_ap"].shape == (3, len(costs))
    np.testing.assert_allclose(result["cv_ap"], grid, atol=1e-9)
    assert result["chosen_cost"].tolist() == chosen
    np.testing.assert_allclose(ap, reference_ap, atol=1e-9)
    assert abs(ap.mean() - reference_ap.mean()) < 1e-6


def test_difficult_samples_are_ignored_in_training_and_test():
    rng = np.random.default_rng(5)
    x, flags = multi_label_data(rng, 200, num_classes=2, difficult=0.0)
    test_x, test_flags = multi_label_data(rng, 120, num_classes=2, difficult=0.0)
    hard = rng.random(200) < 0.15  # difficult for every class
    hard_test = rng.random(120) < 0.2
    noisy_x = x.copy()
    noisy_x[hard] = rng.normal(scale=5.0, size=(hard.sum(), x.shape[1]))
    noisy_test = test_x.copy()
    noisy_test[hard_test] = rng.normal(scale=5.0, size=(hard_test.sum(), x.shape[1]))
    costs = [0.1, 1.0, 10.0]
    kept = train_svm_per_class(x[~hard], flags[~hard], costs=costs)
    with_difficult = train_svm_per_class(noisy_x, np.where(hard[:, None], 0, flags), costs=costs)
    np.testing.assert_allclose(with_difficult["cv_ap"], kept["cv_ap"], atol=1e-12)
    ap_kept = evaluate_svm_per_class(kept["models"], test_x[~hard_test], test_flags[~hard_test])
    ap_all = evaluate_svm_per_class(with_difficult["models"], noisy_test,
                                    np.where(hard_test[:, None], 0, test_flags))
    np.testing.assert_allclose(ap_all, ap_kept, atol=1e-12)


def test_single_label_targets_are_one_vs_rest(data):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 150)
    x = rng.normal(size=(150, 6)) + np.eye(3, 6)[labels] * 2
    flags = binary_targets(labels)
    np.testing.assert_array_equal(flags, np.where(np.eye(3)[labels] == 1, 1, -1))
    costs = [0.1, 1.0]
    a = train_svm_per_class(x, labels, costs=costs)
    b = train_svm_per_class(x, flags, costs=costs)
    np.testing.assert_array_equal(a["cv_ap"], b["cv_ap"])


def test_normalization_is_vissl_formula():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(normalize_features(x), [[3 / 5.00001, 4 / 5.00001], [0, 0]])


def test_bad_targets_raise():
    with pytest.raises(ValueError, match="only 0 and 1"):
        binary_targets(np.array([[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match="VOC flags"):
        binary_targets(np.array([[2, 1], [1, -1]]))
    x = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match="3-fold CV needs"):
        train_svm_per_class(x, np.array([1, -1, -1, -1, -1, -1, -1, -1, -1, 1])[:, None], costs=[1.0])


def test_run_svm_benchmark_writes_metrics_grid_and_per_class_ap(tmp_path, data):
    train_x, train_flags, test_x, test_flags = data
    for layer, dims in (("res4", 8), ("res5avg", 12)):
        save_features(tmp_path / "feats", "train", layer, train_x[:, :dims], train_flags, np.arange(240))
        save_features(tmp_path / "feats", "test", layer, test_x[:, :dims], test_flags, np.arange(150))
    costs = [0.01, 1.0, 100.0]
    metrics = run_svm_benchmark(tmp_path / "feats", tmp_path / "out", layers=["res4", "res5avg"], costs=costs)
    assert metrics == read_metrics(tmp_path / "out")
    assert metrics["benchmark"] == "svm"
    assert [r["layer"] for r in metrics["records"]] == ["res4", "res5avg"]
    grid = json.loads((tmp_path / "out" / "cv_ap.json").read_text())
    per_class = json.loads((tmp_path / "out" / "per_class_ap.json").read_text())
    direct = train_svm_per_class(train_x, train_flags, costs=costs)
    direct_ap = evaluate_svm_per_class(direct["models"], test_x, test_flags)
    for record in metrics["records"]:
        layer = record["layer"]
        assert record["name"] == "mAP" and record["unit"] == "%"
        assert record["params"]["costs"] == costs and record["params"]["cv_folds"] == 3
        assert record["params"]["class_weight"] == {"1": 2, "-1": 1}
        assert np.array(grid[layer]["cv_ap"]).shape == (3, 3)
        assert record["value"] == pytest.approx(np.mean(per_class[layer]["ap"]))
        assert len(per_class[layer]["ap"]) == 3
    # res5avg holds the full features: the same numbers as a direct call
    np.testing.assert_allclose(per_class["res5avg"]["ap"], 100 * direct_ap, atol=1e-9)
    assert per_class["res5avg"]["chosen_cost"] == direct["chosen_cost"].tolist()
    assert grid["res5avg"]["chosen_cost"] == direct["chosen_cost"].tolist()
    np.testing.assert_allclose(grid["res5avg"]["cv_ap"], 100 * direct["cv_ap"], atol=1e-9)
