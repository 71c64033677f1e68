"""Report sections of the SVM and low-shot benchmarks render their result files."""

import json
import re

import numpy as np
import pytest

from sslcore.benchmarks.features import save_features
from sslcore.benchmarks.low_shot import run_low_shot_benchmark
from sslcore.benchmarks.metrics import make_record, write_metrics
from sslcore.report.sections import SECTIONS, render_section
from sslcore.report.sections.low_shot import error_bar_chart_svg


def write_svm_results(out, layer="res5<avg>"):
    params = {"costs": [0.1, 1.0, 10.0], "cv_folds": 3}
    write_metrics(out, "svm", [make_record("mAP", 71.5, unit="%", layer=layer, params=params)])
    (out / "per_class_ap.json").write_text(json.dumps(
        {layer: {"classes": ["0", "1"], "ap": [80.25, 62.75], "chosen_cost": [1.0, 10.0]}}))
    (out / "cv_ap.json").write_text(json.dumps(
        {layer: {"costs": [0.1, 1.0, 10.0], "cv_ap": [[50.0, 77.125, 60.0], [40.0, 50.0, 66.5]],
                 "chosen_cost": [1.0, 10.0]}}))


def test_svm_section_shows_per_class_ap_and_cv_grid(tmp_path):
    write_svm_results(tmp_path)
    html = render_section("svm", tmp_path)
    assert html.startswith("<section") and html.endswith("</section>")
    assert "res5&lt;avg&gt;" in html and "res5<avg>" not in html
    assert "mAP 71.50%" in html
    assert "<td>0</td><td>80.25</td><td>1</td>" in html
    assert "<td>1</td><td>62.75</td><td>10</td>" in html
    # the chosen cost of each class is bold in the CV grid, and only it
    assert re.findall(r"<b>([\d.]+)</b>", html) == ["77.12", "66.50"]
    assert html.count("<th>C=") == 3


def test_svm_section_without_detail_files_shows_map_only(tmp_path):
    write_metrics(tmp_path, "svm", [make_record("mAP", 50.0, unit="%", layer="res4")])
    html = SECTIONS.get("svm")(tmp_path)
    assert "res4: mAP 50.00%" in html and "<table" not in html


def test_error_bar_chart_geometry():
    svg = error_bar_chart_svg(["1", "8"], [40.0, 60.0], [30.0, 55.0], [45.0, 70.0],
                              title="t<", x_label="k", y_label="mAP")
    assert "t&lt;" in svg
    assert svg.count("<circle") == 2
    bars = re.findall(r'<line x1="([\d.]+)" y1="([\d.]+)" x2="\1" y2="([\d.]+)" stroke="#555"', svg)
    assert len(bars) == 2
    for _, low_y, high_y in bars:
        assert float(low_y) > float(high_y)  # SVG y grows downward: min is drawn below max
    circles = [float(y) for y in re.findall(r'<circle cx="[\d.]+" cy="([\d.]+)"', svg)]
    assert circles[0] > circles[1]  # 40 below 60
    with pytest.raises(ValueError):
        error_bar_chart_svg(["1"], [1.0, 2.0], [1.0], [1.0], title="", x_label="", y_label="")


def test_low_shot_section_renders_a_real_run(tmp_path):
    rng = np.random.default_rng(0)
    for split, num in (("train", 80), ("test", 40)):
        labels = np.arange(num) % 3
        x = rng.normal(size=(num, 5)) + np.eye(3, 5)[labels] * 3
        save_features(tmp_path / "feats", split, "res5avg", x, labels, np.arange(num))
    metrics = run_low_shot_benchmark(tmp_path / "feats", tmp_path / "out", k_values=[1, 2, 30], num_samples=2,
                                     costs=[0.1, 1.0])
    html = render_section("low_shot", tmp_path / "out")
    assert html.startswith("<section") and html.endswith("</section>")
    assert html.count("<circle") == 3
    means = [r["value"] for r in metrics["records"] if r["params"]["stat"] == "mean"]
    for value in means:
        assert f"<td>{value:.2f}</td>" in html
    # 80 train rows hold 26 or 27 of each class: k=30 uses all and says so
    assert "classes short of k: 0, 1, 2" in html
