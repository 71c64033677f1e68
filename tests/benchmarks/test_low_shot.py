"""Low-shot SVM: sample sizes per class, seeding, aggregation and a replay of one sample by hand."""

import json
import statistics

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from sslcore.benchmarks.features import save_features
from sslcore.benchmarks.low_shot import aggregate_low_shot, draw_low_shot_samples, run_low_shot_benchmark
from sslcore.benchmarks.svm import binary_targets
from sslcore.benchmarks.voc_ap import voc_average_precision

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def voc_flags(rng, num, num_classes=4):
    flags = np.where(rng.random((num, num_classes)) < 0.3, 1, -1)
    flags[rng.random(flags.shape) < 0.1] = 0
    return flags


@pytest.mark.parametrize("k", [1, 3, 8])
def test_multi_label_draws_k_positives_and_c_minus_1_k_negatives(k):
    flags = voc_flags(np.random.default_rng(0), 400)
    samples = draw_low_shot_samples(flags, [k], num_samples=3, seed=0, single_label=False)
    assert len(samples[k]) == 3
    for sample in samples[k]:
        for c, drawn in enumerate(sample):
            assert len(drawn["positives"]) == k
            assert len(drawn["negatives"]) == 3 * k
            assert len(set(drawn["positives"])) == k and len(set(drawn["negatives"])) == 3 * k
            assert (flags[drawn["positives"], c] == 1).all()
            assert (flags[drawn["negatives"], c] == -1).all()  # difficult rows are never drawn


@pytest.mark.parametrize("k", [1, 5])
def test_single_label_draws_one_shared_set_of_k_per_class(k):
    labels = np.random.default_rng(1).integers(0, 5, 300)
    flags = binary_targets(labels)
    sample = draw_low_shot_samples(flags, [k], num_samples=1, seed=2, single_label=True)[k][0]
    shared = sorted(sum((d["positives"] for d in sample), []))
    assert len(shared) == 5 * k
    for c, drawn in enumerate(sample):
        assert len(drawn["positives"]) == k and (labels[drawn["positives"]] == c).all()
        assert sorted(drawn["positives"] + drawn["negatives"]) == shared


def test_seeds_reproducible_and_distinct():
    flags = voc_flags(np.random.default_rng(0), 400)
    a = draw_low_shot_samples(flags, [2, 4], num_samples=3, seed=7, single_label=False)
    b = draw_low_shot_samples(flags, [4], num_samples=3, seed=7, single_label=False)
    c = draw_low_shot_samples(flags, [2, 4], num_samples=3, seed=8, single_label=False)
    assert a[4] == b[4]  # a sample does not depend on which other k values run
    assert a != c
    assert a[4][0] != a[4][1]  # independent samples differ


def test_aggregation_picks_best_mean_cost():
    grid = np.array([[10.0, 30.0, 20.0], [14.0, 26.0, 40.0], [12.0, 31.0, 15.0]])  # (samples, costs)
    best, stats = aggregate_low_shot(grid)
    assert best == 1  # means 12, 29, 25
    assert stats["mean"] == pytest.approx(29.0)
    assert stats["std"] == pytest.approx(statistics.pstdev([30.0, 26.0, 31.0]))
    assert (stats["min"], stats["max"]) == (26.0, 31.0)


@pytest.fixture(scope="module")
def low_shot_run(tmp_path_factory):
    rng = np.random.default_rng(4)
    root = tmp_path_factory.mktemp("low_shot")
    w = rng.normal(size=(10, 4))
    for split, num in (("train", 300), ("test", 120)):
        x = rng.normal(size=(num, 10)).astype(np.float32)
        flags = np.where(x @ w + rng.normal(size=(num, 4)) > 1.0, 1, -1)
        flags[rng.random(flags.shape) < 0.05] = 0
        if split == "train":
            flags[:, 3] = np.where(np.arange(num) < 3, 1, np.where(flags[:, 3] == 1, -1, flags[:, 3]))
        save_features(root / "feats", split, "res5avg", x, flags, np.arange(num))
    metrics = run_low_shot_benchmark(root / "feats", root / "out", k_values=[1, 4], num_samples=3, seed=0,
                                     costs=[0.1, 1.0, 10.0])
    return root, metrics


def test_stats_records_match_saved_grid(low_shot_run):
    root, metrics = low_shot_run
    details = json.loads((root / "out" / "low_shot_ap.json").read_text())
    assert metrics["benchmark"] == "low_shot"
    assert len(metrics["records"]) == 2 * 4
    for record in metrics["records"]:
        k, stat = record["params"]["k"], record["params"]["stat"]
        grid = np.array(details["map"][str(k)])
        assert grid.shape == (3, 3)
        means = grid.mean(axis=0)
        best = int(np.argmax(means))
        column = grid[:, best].tolist()
        expected = {"mean": statistics.fmean(column), "std": statistics.pstdev(column),
                    "min": min(column), "max": max(column)}[stat]
        assert record["value"] == pytest.approx(expected, abs=1e-9)
        assert record["params"]["cost"] == [0.1, 1.0, 10.0][best] == details["chosen_cost"][str(k)]
        assert record["params"]["num_samples"] == 3 and record["unit"] == "%"


def test_class_with_fewer_than_k_positives_is_flagged(low_shot_run):
    _, metrics = low_shot_run
    by_k = {r["params"]["k"]: r["params"] for r in metrics["records"]}
    assert "classes_short" not in by_k[1]
    assert by_k[4]["classes_short"] == [3]
    assert {"k": 4, "class": 3, "kind": "positives", "wanted": 4, "available": 3} in metrics["shortfalls"]


def test_saved_samples_replay_to_the_same_map(low_shot_run):
    root, _ = low_shot_run
    saved = json.loads((root / "out" / "low_shot_samples.json").read_text())
    details = json.loads((root / "out" / "low_shot_ap.json").read_text())
    x = np.load(root / "feats" / "train_res5avg_features.npy").astype(np.float64)
    tx = np.load(root / "feats" / "test_res5avg_features.npy").astype(np.float64)
    test_flags = np.load(root / "feats" / "test_res5avg_targets.npy")
    x, tx = x / (np.linalg.norm(x, axis=1)[:, None] + 1e-5), tx / (np.linalg.norm(tx, axis=1)[:, None] + 1e-5)
    sample = saved["samples"]["4"][2]
    aps = []
    for c, drawn in enumerate(sample):
        rows = drawn["positives"] + drawn["negatives"]
        y = [1] * len(drawn["positives"]) + [-1] * len(drawn["negatives"])
        svm = LinearSVC(C=1.0, class_weight={1: 2, -1: 1}, dual=True, max_iter=2000, tol=1e-4,
                        random_state=0).fit(x[rows], y)
        aps.append(voc_average_precision(test_flags[:, c], svm.decision_function(tx)))
    assert details["map"]["4"][2][1] == pytest.approx(100 * np.mean(aps), abs=1e-9)
