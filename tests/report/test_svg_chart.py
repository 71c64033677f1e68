"""Inline SVG line charts: ticks, coordinates, degenerate data."""

import math
import xml.etree.ElementTree as ET

import pytest

from sslcore.report.svg import line_chart_svg, nice_ticks

NS = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("low, high", [(0, 1), (0.3, 0.7), (-2.5, 13), (1e-5, 0.1), (0, 9999), (2.302, 2.31)])
def test_nice_ticks_cover_range_with_round_steps(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and 3 <= len(ticks) <= 12
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6
    assert all(abs((b - a) - step) < step * 1e-6 for a, b in zip(ticks, ticks[1:]))


def test_constant_series_gets_a_nonzero_range():
    ticks = nice_ticks(5.0, 5.0)
    assert ticks[0] < 5.0 < ticks[-1]


def test_chart_is_valid_xml_with_points_inside_the_frame():
    svg = line_chart_svg([0, 1, 2, 3], [1.0, 0.5, float("nan"), 0.25], title="a < b", x_label="it",
                         y_label="loss", width=300, height=200, markers=[2])
    root = ET.fromstring(svg)
    frame = root.find(f"{NS}rect")
    x0, y0 = float(frame.get("x")), float(frame.get("y"))
    x1, y1 = x0 + float(frame.get("width")), y0 + float(frame.get("height"))
    points = [tuple(map(float, p.split(","))) for p in root.find(f"{NS}polyline").get("points").split()]
    assert len(points) == 3
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in points)
    assert root.find(f"{NS}text").text == "a < b"
    assert len([e for e in root.iter(f"{NS}line") if e.get("stroke-dasharray")]) == 1


def test_empty_and_mismatched_series():
    root = ET.fromstring(line_chart_svg([1], [float("inf")], title="t", x_label="x", y_label="y"))
    assert root.find(f"{NS}polyline") is None
    assert any(t.text == "no data" for t in root.iter(f"{NS}text"))
    with pytest.raises(ValueError, match="same length"):
        line_chart_svg([1, 2], [1], title="t", x_label="x", y_label="y")
