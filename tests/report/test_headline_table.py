"""The headline table: one line per model, one top-1 column per protocol setting."""

from sslcore.report import format_headline_table


def _metrics(model, knn, linear):
    return [
        {"model": model, "benchmark": "knn", "records": [
            {"name": "top1", "value": knn[0], "unit": "%", "layer": "res5avg", "params": {"k": 200, "T": 0.1}},
            {"name": "top5", "value": 99.0, "unit": "%", "layer": "res5avg", "params": {"k": 200, "T": 0.1}},
            {"name": "top1", "value": knn[1], "unit": "%", "layer": "res5avg", "params": {"k": 20, "T": 0.07}}]},
        {"model": model, "benchmark": "linear", "records": [
            {"name": "top1", "value": linear, "unit": "%", "layer": "res5avg", "params": {"epochs": 28, "lr": 0.01}}]},
    ]


def test_one_line_per_model_and_top1_only():
    text = format_headline_table(_metrics("pretrained", (78.12, 80.85), 79.04)
                                 + _metrics("random init", (70.35, 75.29), 69.44))
    lines = text.splitlines()
    assert lines[0].split() == ["model", "knn", "top-1", "k=200", "T=0.1", "knn", "top-1", "k=20",
                                "T=0.07", "linear", "top-1", "epochs=28"]
    assert lines[2].split() == ["pretrained", "78.12", "%", "80.85", "%", "79.04", "%"]
    assert lines[3].split()[:2] == ["random", "init"] and "69.44" in lines[3]
    assert "99.0" not in text  # top-5 stays in the full table


def test_missing_cell_and_empty():
    rows = _metrics("pretrained", (1.0, 2.0), 3.0) + [_metrics("raw pixels", (4.0, 5.0), 6.0)[0]]
    assert format_headline_table(rows).splitlines()[-1].split()[-1] == "-"
    assert format_headline_table([]) == "(no top-1 results)"
