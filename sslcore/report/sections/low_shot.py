"""Report section of the low-shot SVM benchmark: test mAP against k with min/max error bars.

Reads what :func:`sslcore.benchmarks.low_shot.run_low_shot_benchmark` writes: ``metrics.json``
(mean/std/min/max mAP per k, with the chosen cost) and ``shortfalls`` in it. Shows an inline SVG
chart (k on a categorical axis, the mean as a line, a bar from min to max over the samples at
each k) and a table of the numbers.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Dict, List, Sequence

from sslcore.benchmarks.metrics import read_metrics
from sslcore.report.sections import SECTIONS
from sslcore.report.svg import _frame, nice_ticks

_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 28, 40  # the margins of sslcore.report.svg


def error_bar_chart_svg(labels: Sequence[str], means: Sequence[float], lows: Sequence[float],
                        highs: Sequence[float], *, title: str, x_label: str, y_label: str,
                        width: int = 640, height: int = 260) -> str:
    """A line of means over categorical x positions, with a vertical bar from low to high at each.

    Args:
        labels: (P,) x tick labels (e.g. the k values), evenly spaced.
        means: (P,) y of the line.
        lows: (P,) bottom of each error bar (e.g. the min over samples).
        highs: (P,) top of each error bar.
        title, x_label, y_label: texts (escaped).
        width, height: SVG size in CSS pixels.

    Returns:
        ``<svg>...</svg>`` with one ``<polyline>``, one ``<circle>`` and one error ``<line>`` per
        point; "no data" when P is 0.

    Raises:
        ValueError: if the sequences differ in length or hold non-finite values.
    """
    if not len(labels) == len(means) == len(lows) == len(highs):
        raise ValueError("labels, means, lows and highs must have the same length")
    values = [float(v) for v in list(means) + list(lows) + list(highs)]
    if not all(math.isfinite(v) for v in values):
        raise ValueError("means, lows and highs must be finite numbers")
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    parts = _frame(title, x_label, y_label, width, height, "chart")
    if not labels:
        parts.append(f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + plot_h / 2:.1f}" '
                     'text-anchor="middle">no data</text></svg>')
        return "".join(parts)
    ticks = nice_ticks(min(values), max(values))
    step = plot_w / len(labels)

    def sx(i: int) -> float:
        return _LEFT + step * (i + 0.5)

    def sy(y: float) -> float:
        return _TOP + plot_h - (y - ticks[0]) / (ticks[-1] - ticks[0]) * plot_h

    for y in ticks:
        parts.append(f'<line x1="{_LEFT}" y1="{sy(y):.1f}" x2="{_LEFT + plot_w}" y2="{sy(y):.1f}" stroke="#eee"/>'
                     f'<text x="{_LEFT - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" class="tick">{y:.4g}</text>')
    for i, label in enumerate(labels):
        parts.append(f'<text x="{sx(i):.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle" '
                     f'class="tick">{escape(str(label))}</text>')
        parts.append(f'<line x1="{sx(i):.1f}" y1="{sy(float(lows[i])):.1f}" x2="{sx(i):.1f}" '
                     f'y2="{sy(float(highs[i])):.1f}" stroke="#555" stroke-width="1.5"/>')
        parts.append(f'<circle cx="{sx(i):.1f}" cy="{sy(float(means[i])):.1f}" r="3" fill="#1f6feb"/>')
    coords = " ".join(f"{sx(i):.1f},{sy(float(m)):.1f}" for i, m in enumerate(means))
    parts.append(f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{coords}"/></svg>')
    return "".join(parts)


def _stats_by_layer_and_k(records: List[dict]) -> Dict[str, Dict[int, Dict[str, dict]]]:
    out: Dict[str, Dict[int, Dict[str, dict]]] = {}
    for record in records:
        params = record["params"]
        if record["name"] == "mAP" and "k" in params and "stat" in params:
            out.setdefault(str(record["layer"]), {}).setdefault(int(params["k"]), {})[params["stat"]] = record
    return out


@SECTIONS.register("low_shot")
def render_low_shot_section(result_dir: Path) -> str:
    """HTML ``<section>`` for the low-shot results in ``result_dir``.

    Args:
        result_dir: directory holding the low-shot ``metrics.json``.

    Returns:
        One self-contained ``<section>``: per layer, the mAP-vs-k chart (mean, min-max bars) and
        a table of mean / std / min / max and the chosen cost per k; classes with fewer than k
        positives are listed under the table.

    Raises:
        FileNotFoundError: if ``metrics.json`` is missing.
        ValueError: if ``metrics.json`` is malformed.
    """
    metrics = read_metrics(Path(result_dir))
    parts = ['<section class="benchmark-low-shot"><h3>Low-shot linear SVM</h3>',
             "<p>Test mAP (%) of one-vs-rest linear SVMs trained on k positives per class; mean over "
             "independent samples, bars from min to max. Per k the cost with the best mean test mAP "
             "is shown (VISSL's selection).</p>"]
    for layer, by_k in _stats_by_layer_and_k(metrics["records"]).items():
        ks = sorted(by_k)
        stat = {s: [by_k[k][s]["value"] if s in by_k[k] else float("nan") for k in ks]
                for s in ("mean", "std", "min", "max")}
        parts.append(f"<h4>{escape(layer)}</h4>")
        parts.append(error_bar_chart_svg([str(k) for k in ks], stat["mean"], stat["min"], stat["max"],
                                         title=f"low-shot mAP, {layer}", x_label="k (positives per class)",
                                         y_label="test mAP (%)"))
        rows = []
        for i, k in enumerate(ks):
            params = next(iter(by_k[k].values()))["params"]
            short = params.get("classes_short", [])
            note = f" (classes short of k: {', '.join(str(c) for c in short)})" if short else ""
            rows.append(f"<tr><td>{k}</td><td>{params.get('num_samples', '')}</td>"
                        + "".join(f"<td>{stat[s][i]:.2f}</td>" for s in ("mean", "std", "min", "max"))
                        + f"<td>{escape(str(params.get('cost', '')))}{escape(note)}</td></tr>")
        parts.append("<table><tr><th>k</th><th>samples</th><th>mean</th><th>std</th><th>min</th><th>max</th>"
                     "<th>cost C</th></tr>" + "".join(rows) + "</table>")
    parts.append("</section>")
    return "".join(parts)
