"""The retrieval and clusterfit report sections render self-contained, escaped HTML."""

import base64
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from sslcore.benchmarks.metrics import make_record, write_metrics
from sslcore.report.sections import render_section
from sslcore.report.sections.clusterfit import MAX_BARS, size_bars


def _retrieval_dir(root: Path) -> Path:
    params = {"set": "<set>", "descriptor": "gem", "p": 3.0, "layer": "res5", "whitening": False, "protocol": "class"}
    records = [make_record("mAP", 41.25, unit="%", layer="res5", params=params)]
    records += [make_record(f"precision@{k}", v, unit="%", layer="res5", params={**params, "k": k})
                for k, v in ((1, 70.0), (5, 62.5), (10, 58.0))]
    write_metrics(root, "retrieval", records)
    (root / "thumbnails").mkdir()
    for name, shade in (("q0", 10), ("d1", 100), ("d2", 200)):
        Image.fromarray(np.full((8, 8), shade, np.uint8)).save(root / "thumbnails" / f"{name}.png")
    top = [{"id": 1, "name": "train/1", "similarity": 0.9, "relevant": True, "junk": False,
            "thumbnail": "thumbnails/d1.png"},
           {"id": 2, "name": "<b>evil</b>", "similarity": 0.5, "relevant": False, "junk": False,
            "thumbnail": "thumbnails/d2.png"}]
    (root / "examples.json").write_text(json.dumps({"protocol": "class", "examples": [
        {"query": {"id": 0, "name": "test/0", "thumbnail": "thumbnails/q0.png"}, "top": top}]}))
    return root


def test_retrieval_section_has_the_table_and_bordered_inline_thumbnails(tmp_path):
    html = render_section("retrieval", _retrieval_dir(tmp_path))
    assert html.startswith("<section>") and html.endswith("</section>")
    assert "41.25" in html and "62.50" in html and "precision@10" in html
    pattern = r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)"[^>]*border:4px solid (#[0-9a-f]+)'
    images = re.findall(pattern, html)
    assert len(images) == 3
    assert base64.b64decode(images[1][0]) == (tmp_path / "thumbnails" / "d1.png").read_bytes()
    colours = [c for _, _, c in images]
    assert colours[1] == "#1a7f37" and colours[2] == "#cf222e"  # relevant green, not relevant red
    assert "<b>evil</b>" not in html and "&lt;b&gt;evil&lt;/b&gt;" in html
    assert "&lt;set&gt;" in html


def test_retrieval_section_refuses_thumbnails_outside_its_directory(tmp_path):
    root = _retrieval_dir(tmp_path / "r")
    data = json.loads((root / "examples.json").read_text())
    data["examples"][0]["top"][0]["thumbnail"] = "../../etc/passwd"
    (root / "examples.json").write_text(json.dumps(data))
    html = render_section("retrieval", root)
    assert html.count("data:image/png") == 2 and "[missing" in html


def _clusterfit_dir(root: Path, sizes) -> Path:
    params = {"num_clusters": len(sizes), "n_iter": 20, "layer": "res5avg", "seed": 0, "split": "train"}
    records = [make_record("NMI", 51.5, unit="%", layer="res5avg", params=params),
               make_record("inertia", 123.4, unit="", layer="res5avg", params=params),
               make_record("smallest_cluster", int(min(sizes)), unit="images", layer="res5avg", params=params)]
    write_metrics(root, "clusterfit", records, extra={"cluster_sizes": {"train": list(sizes)}})
    return root


def test_clusterfit_section_draws_one_bar_per_cluster_largest_first(tmp_path):
    sizes = [5, 30, 0, 12]
    html = render_section("clusterfit", _clusterfit_dir(tmp_path, sizes))
    assert "51.50 %" in html and "123.4" in html
    bars = re.findall(r'<rect class="bar" x="[^"]+" y="[^"]+" width="[^"]+" height="([^"]+)"', html)
    heights = [float(h) for h in bars]
    assert len(heights) == 4 and heights == sorted(heights, reverse=True) and heights[-1] == 0
    assert abs(heights[1] / heights[0] - 12 / 30) < 1e-3


def test_many_clusters_become_a_size_histogram():
    sizes = np.random.default_rng(0).integers(0, 50, size=MAX_BARS + 36)
    heights, x_label, y_label = size_bars(sizes)
    assert len(heights) == 30 and sum(heights) == len(sizes) and y_label == "clusters"
    assert heights == np.histogram(sizes, bins=30, range=(0, sizes.max()))[0].tolist()
