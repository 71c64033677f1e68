"""The terminal table: every number and parameter shows up, and lines fit 100 columns."""

import pytest

from sslcore.report import format_metrics_table
from sslcore.report.table import format_params, format_value, metrics_to_rows

KNN = {"benchmark": "knn", "protocol": "weighted kNN", "records": [
    {"name": "top1", "value": 85.125, "unit": "%", "layer": "res5avg", "params": {"k": 200, "T": 0.1}},
    {"name": "top5", "value": 99.5, "unit": "%", "layer": "res5avg", "params": {"k": 20, "T": 0.07}},
]}
LINEAR = {"benchmark": "linear", "records": [
    {"name": "top1", "value": 84.57, "unit": "%", "layer": "pixels",
     "params": {"epochs": 28, "lr": 0.01, "batch_size": 256, "weight_decay": 0.0005,
                "schedule": "multistep", "milestones": [8, 16, 24], "gamma": 0.1, "optimizer": "sgd",
                "momentum": 0.9, "nesterov": True, "seed": 0}},
]}


def test_table_contains_every_value_and_fits_100_columns():
    text = format_metrics_table([{"model": "pretrained", **KNN}, {"model": "raw pixels", **LINEAR}])
    lines = text.splitlines()
    assert lines[0].split() == ["model", "benchmark", "layer", "metric", "value", "protocol", "params"]
    assert set(lines[1]) <= {"-", " "}
    assert max(len(line) for line in lines) <= 100
    for needle in ("pretrained", "raw pixels", "knn", "linear", "res5avg", "pixels", "85.12 %",
                   "99.50 %", "84.57 %", "k=200, T=0.1", "k=20, T=0.07", "milestones=[8,16,24]",
                   "nesterov=True", "seed=0"):
        assert needle in text, needle
    assert len(lines) > 2 + 3, "the long linear params should wrap onto continuation lines"


def test_narrow_width_wraps_instead_of_cutting():
    text = format_metrics_table([{"model": "pretrained", **LINEAR}], width=60)
    joined = " ".join(text.split())
    assert "weight_decay=0.0005" in joined and "optimizer=sgd" in joined


def test_flat_rows_and_empty_input():
    row = {"model": "random init", "benchmark": "knn", "layer": "res5avg", "metric": "top1",
           "value": 10.0, "unit": "%", "params": {}}
    text = format_metrics_table([row])
    assert "random init" in text and "10.00 %" in text and text.splitlines()[2].rstrip().endswith("-")
    assert format_metrics_table([]) == "(no results)"


def test_metrics_without_model_are_rejected():
    with pytest.raises(ValueError, match="lacks \\['model'\\]"):
        metrics_to_rows([KNN])


def test_value_and_params_formatting():
    assert format_value(84.567, "%") == "84.57 %" and format_value(3) == "3"
    assert format_params({"k": 200, "T": 0.1, "ks": [1, 5]}) == "k=200, T=0.1, ks=[1,5]"
    assert format_params({}) == "-"
