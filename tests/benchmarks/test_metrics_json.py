"""metrics.json round trip, record validation, and top-k accuracy."""

import json

import numpy as np
import pytest

from sslcore.benchmarks.metrics import (make_record, read_metrics, topk_accuracy, write_metrics,
                                        write_skipped)


def test_round_trip_with_numpy_values(tmp_path):
    records = [
        make_record("top1", np.float32(85.125), unit="%", layer="res5avg",
                    params={"k": np.int64(200), "T": 0.1}),
        {"name": "top5", "value": 99, "unit": "%", "layer": "res5avg",
         "params": {"milestones": (8, 16), "arr": np.array([1, 2])}},
    ]
    path = write_metrics(tmp_path / "knn", "knn", records, {"num_train": np.int64(10)})
    assert path == tmp_path / "knn" / "metrics.json"
    data = json.loads(path.read_text())
    assert data["benchmark"] == "knn" and data["num_train"] == 10
    assert data["records"][0] == {"name": "top1", "value": 85.125, "unit": "%", "layer": "res5avg",
                                  "params": {"k": 200, "T": 0.1}}
    assert data["records"][1]["params"] == {"milestones": [8, 16], "arr": [1, 2]}
    assert read_metrics(tmp_path / "knn") == read_metrics(path) == data


@pytest.mark.parametrize("record, match", [
    ({"name": "top1", "value": 1.0, "unit": "%", "layer": "x"}, "lacks"),
    ({"name": "top1", "value": float("nan"), "unit": "%", "layer": "x", "params": {}}, "finite"),
    ({"name": "top1", "value": "85", "unit": "%", "layer": "x", "params": {}}, "number"),
    ({"name": "top1", "value": True, "unit": "%", "layer": "x", "params": {}}, "number"),
    ({"name": "top1", "value": 1.0, "unit": "%", "layer": "x", "params": [1]}, "params must be a dict"),
])
def test_write_rejects_bad_records(tmp_path, record, match):
    with pytest.raises(ValueError, match=match):
        write_metrics(tmp_path, "knn", [record])
    assert not (tmp_path / "metrics.json").exists()


def test_extra_cannot_override_fixed_fields(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        write_metrics(tmp_path, "knn", [], {"records": []})


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the benchmark first"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text('{"records": []}')
    with pytest.raises(ValueError, match="needs 'benchmark'"):
        read_metrics(tmp_path)


def test_topk_accuracy_counts_and_tie_break():
    scores = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.0, 0.0, 0.0]])
    labels = np.array([1, 2, 1])
    out = topk_accuracy(scores, labels, ks=(1, 2, 5))
    # row 0 right at 1; row 1 right at 2; row 2 ties: stable order 0, 1, 2 -> right at 2
    assert out["top1"] == pytest.approx(100 / 3)
    assert out["top2"] == pytest.approx(100.0)
    assert out["top5"] == 100.0  # min(5, C) = 3 classes


def test_topk_accuracy_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        topk_accuracy(np.zeros((2, 2)), np.array([0, 2]))


def test_a_skipped_benchmark_reads_back_with_no_records_and_its_reason(tmp_path):
    write_skipped(tmp_path / "svm", "svm", "run_svm is false")
    read = read_metrics(tmp_path / "svm")
    assert read == {"benchmark": "svm", "records": [], "skipped": "run_svm is false"}
