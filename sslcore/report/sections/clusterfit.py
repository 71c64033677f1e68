"""Report section ``clusterfit``: cluster statistics, NMI / ARI, and the cluster sizes as SVG bars.

Reads the ``metrics.json`` the ClusterFit stage writes (:mod:`sslcore.benchmarks.clusterfit`):
records per split (inertia, smallest/largest cluster, empty clusters, NMI, ARI) and the extra
field ``cluster_sizes``. Up to :data:`MAX_BARS` clusters are drawn one bar each, largest first;
more are drawn as a histogram of cluster sizes.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from sslcore.benchmarks.metrics import read_metrics
from sslcore.report.sections import SECTIONS
from sslcore.report.svg import nice_ticks

MAX_BARS = 64
_ORDER = ("NMI", "ARI", "inertia", "mean_squared_distance", "smallest_cluster", "largest_cluster",
          "empty_clusters")


def bar_chart_svg(heights: Sequence[float], *, title: str, x_label: str, y_label: str,
                  width: int = 640, height: int = 220) -> str:
    """Vertical bars as an inline SVG element (one ``<rect>`` per value), y axis from 0.

    Args:
        heights: bar heights, >= 0.
        title, x_label, y_label: texts (escaped).
        width, height: size in pixels.

    Returns:
        ``<svg ...>...</svg>`` text.
    """
    left, right, top, bottom = 56, 12, 24, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    ticks = nice_ticks(0.0, max(max(heights, default=0.0), 1.0))
    y_max = ticks[-1]
    step = plot_w / max(len(heights), 1)
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text class="title" x="{left}" y="16">{escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>']
    for tick in ticks:
        y = top + plot_h - plot_h * tick / y_max
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for i, value in enumerate(heights):
        bar = plot_h * float(value) / y_max
        parts.append(f'<rect class="bar" x="{left + i * step + step * 0.1:.2f}" y="{top + plot_h - bar:.2f}" '
                     f'width="{step * 0.8:.2f}" height="{bar:.2f}" fill="#0969da"/>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text x="12" y="{top + plot_h / 2}" transform="rotate(-90 12 {top + plot_h / 2})" '
                 f'text-anchor="middle">{escape(y_label)}</text></svg>')
    return "".join(parts)


def size_bars(sizes: Sequence[int]) -> Tuple[List[float], str, str]:
    """What to draw for cluster sizes: ``(heights, x label, y label)``.

    Up to :data:`MAX_BARS` clusters: one bar per cluster, largest first. More: a histogram of
    the sizes in 30 equal-width bins from 0 to the largest size.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if len(sizes) <= MAX_BARS:
        return np.sort(sizes)[::-1].astype(float).tolist(), "clusters, largest first", "images"
    counts, _ = np.histogram(sizes, bins=30, range=(0, max(int(sizes.max()), 1)))
    return counts.astype(float).tolist(), f"cluster size (30 bins, 0 to {int(sizes.max())} images)", "clusters"


def _table(records: List[Mapping[str, Any]]) -> str:
    by_split: Dict[str, Dict[str, Mapping[str, Any]]] = {}
    for record in records:
        by_split.setdefault(str(record["params"].get("split", "")), {})[record["name"]] = record
    names = [n for n in _ORDER if any(n in row for row in by_split.values())]
    head = "<th>split</th>" + "".join(f"<th>{escape(n)}</th>" for n in names)
    body = []
    for split, row in by_split.items():
        cells = []
        for name in names:
            rec = row.get(name)
            text = "" if rec is None else (f"{rec['value']:.2f} %" if rec["unit"] == "%" else f"{rec['value']:.4g}")
            cells.append(f'<td class="value">{escape(text)}</td>')
        body.append(f"<tr><td>{escape(split)}</td>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@SECTIONS.register("clusterfit")
def render_clusterfit_section(result_dir: Path) -> str:
    """The ClusterFit section: statistics per split and a cluster-size chart per split.

    Args:
        result_dir: the directory holding the clusterfit stage's ``metrics.json``.

    Returns:
        One ``<section>`` HTML fragment (text escaped, charts as inline SVG).

    Raises:
        FileNotFoundError, ValueError: ``metrics.json`` missing or malformed.
    """
    metrics = read_metrics(Path(result_dir))
    records = metrics["records"]
    params = records[0]["params"] if records else {}
    setting = ", ".join(f"{escape(k)}={escape(str(params[k]))}"
                        for k in ("num_clusters", "n_iter", "layer", "seed") if k in params)
    charts = []
    for split, sizes in (metrics.get("cluster_sizes") or {}).items():
        heights, x_label, y_label = size_bars(sizes)
        charts.append(bar_chart_svg(heights, title=f"{split}: cluster sizes", x_label=x_label, y_label=y_label))
    return (f"<section><h3>ClusterFit step 1: k-means pseudo-labels</h3><p class=\"params\">{setting}</p>"
            f"{_table(records)}{''.join(charts)}</section>")
