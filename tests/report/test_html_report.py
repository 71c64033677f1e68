"""The HTML run report: well-formed, self-contained, escaped, one chart point per log record."""

import json
import math
import re
from html.parser import HTMLParser

import pytest

from sslcore.report import write_html_report
from sslcore.report.train_log import phase_starts, read_train_log, summarize_train_log

VOID = {"meta", "br", "hr", "img", "input", "link", "rect", "line", "polyline", "path", "circle"}


class Collector(HTMLParser):
    """Checks nesting and gathers tags, attributes and text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.tags, self.text, self.errors = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(path):
    parser = Collector()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def _write_log(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    return path


def _records(n=25, nan_at=None):
    out = []
    for i in range(n):
        loss = float("nan") if i == nan_at else 5.0 * math.exp(-i / 10)
        out.append({"iteration": i * 10, "phase_idx": i // 10, "loss": loss, "lr": 0.3 * (1 - i / n),
                    "images_per_sec": 100.0 + i})
    return out


METRICS = [{"model": "pretrained <b>", "benchmark": "knn", "protocol": "weighted kNN & friends",
            "records": [{"name": "top1", "value": 85.125, "unit": "%", "layer": "res5avg",
                         "params": {"k": 200, "T": 0.1}}]},
           {"model": "raw pixels", "benchmark": "linear",
            "records": [{"name": "top1", "value": 84.57, "unit": "%", "layer": "pixels",
                         "params": {"epochs": 28, "milestones": [8, 16, 24]}}]}]


def test_report_is_well_formed_and_self_contained(tmp_path):
    log = _write_log(tmp_path / "stdout.json", _records())
    out = write_html_report(tmp_path / "r" / "report.html", title="Run <1> & co", metrics=METRICS,
                            train_log=log, config_yaml="config:\n  X: '<script>alert(1)</script>'\n",
                            notes="first line\n<i>not italic</i>")
    assert out == tmp_path / "r" / "report.html"
    parsed = _parse(out)
    assert not parsed.errors and parsed.stack == []
    tags = [t for t, _ in parsed.tags]
    assert "script" not in tags and "link" not in tags and "img" not in tags and "i" not in tags
    assert tags.count("table") == 1 and tags.count("pre") == 1 and tags.count("svg") == 2
    assert not [a for _, attrs in parsed.tags for k, a in attrs.items() if k in ("src", "href")]
    text = "".join(parsed.text)
    for needle in ("Run <1> & co", "pretrained <b>", "85.12 %", "84.57 %", "k=200, T=0.1",
                   "milestones=[8,16,24]", "<script>alert(1)</script>", "<i>not italic</i>",
                   "weighted kNN & friends", "25 log records", "final loss"):
        assert needle in text, needle


def test_charts_have_one_point_per_record_and_phase_markers(tmp_path):
    log = _write_log(tmp_path / "log.jsonl", _records(25))
    parsed = _parse(write_html_report(tmp_path / "report.html", title="t", metrics=[], train_log=log))
    polylines = [a["points"].split() for t, a in parsed.tags if t == "polyline"]
    assert [len(p) for p in polylines] == [25, 25]
    for points in polylines:
        xs = [float(p.split(",")[0]) for p in points]
        assert xs == sorted(xs), "points follow the iterations"
    dashed = [a for t, a in parsed.tags if t == "line" and "stroke-dasharray" in a]
    assert len(dashed) == 2 * 2  # phases start at iterations 100 and 200, on both charts
    loss_ys = [float(p.split(",")[1]) for p in polylines[0]]
    assert loss_ys == sorted(loss_ys), "a falling loss is drawn going down (SVG y grows downward)"


def test_nan_loss_is_left_out_and_flagged(tmp_path):
    log = _write_log(tmp_path / "log.jsonl", _records(12, nan_at=5))
    parsed = _parse(write_html_report(tmp_path / "report.html", title="t", metrics=METRICS, train_log=log))
    polylines = [a["points"].split() for t, a in parsed.tags if t == "polyline"]
    assert [len(p) for p in polylines] == [11, 12]
    assert "training diverged" in "".join(parsed.text)


def test_report_without_optional_parts(tmp_path):
    parsed = _parse(write_html_report(tmp_path / "report.html", title="only", metrics=[]))
    tags = [t for t, _ in parsed.tags]
    assert "svg" not in tags and "pre" not in tags and "No benchmark results." in "".join(parsed.text)


def test_benchmark_details_follow_the_table_grouped_by_benchmark(tmp_path, monkeypatch):
    from sslcore.report.sections import SECTIONS

    def render(result_dir):
        return f"<section><p>{(result_dir / 'note.txt').read_text()}</p></section>"

    monkeypatch.setitem(SECTIONS._entries, "details_probe", render)
    dirs = []
    for model in ("pretrained", "random <init>"):
        (tmp_path / model).mkdir()
        (tmp_path / model / "note.txt").write_text(f"from {model.split()[0]}")
        dirs.append((model, "details_probe", tmp_path / model))
    dirs.append(("pretrained", "knn", tmp_path))  # no renderer: nothing added
    parsed = _parse(write_html_report(tmp_path / "report.html", title="t", metrics=METRICS,
                                      result_dirs=dirs))
    text = "".join(parsed.text)
    assert text.count("details_probe: details") == 1 and "knn: details" not in text
    assert text.index("Benchmarks") < text.index("from pretrained") < text.index("from random")
    assert "random <init>" in text  # escaped in the HTML, read back as text


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="training log"):
        write_html_report(tmp_path / "r.html", title="t", metrics=[], train_log=tmp_path / "none.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"iteration": 1, "loss": 2.0}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_train_log(tmp_path / "bad.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"iteration": 1}\n')
    with pytest.raises(ValueError, match=r":1: record lacks \['loss'\]"):
        read_train_log(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="lacks \\['model'\\]"):
        write_html_report(tmp_path / "r.html", title="t", metrics=[{"benchmark": "knn", "records": []}])
    assert not (tmp_path / "r.html").exists()


def test_log_summary_and_vissl_phase_name():
    records = [{"iteration": 1, "train_phase_idx": 0, "loss": 3.0, "images_per_sec": 10.0},
               {"iteration": 2, "train_phase_idx": 1, "loss": 2.0, "images_per_sec": 30.0},
               {"iteration": 3, "train_phase_idx": 1, "loss": float("inf")}]
    assert phase_starts(records) == [2.0]
    summary = summarize_train_log(records)
    assert summary["last_iteration"] == 3 and summary["median_images_per_sec"] == 20.0
    assert summary["non_finite_losses"] == 1 and math.isinf(summary["final_loss"])


def test_svg_numbers_are_plain(tmp_path):
    log = _write_log(tmp_path / "log.jsonl", _records(5))
    html = write_html_report(tmp_path / "r.html", title="t", metrics=[], train_log=log).read_text()
    for points in re.findall(r'points="([^"]*)"', html):
        for pair in points.split():
            x, y = (float(v) for v in pair.split(","))
            assert 0 <= x <= 640 and 0 <= y <= 260
