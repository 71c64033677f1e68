"""Line charts as inline SVG text, for self-contained HTML reports (no plotting library needed).

A chart is one ``<svg>`` element: a framed plot area, "nice" axis ticks (1, 2 or 5 times a power of
ten), one ``<polyline>`` with a point per finite data point, and optional dashed vertical markers
(e.g. where a training phase starts). All text is XML-escaped.
"""

from __future__ import annotations

import math
from html import escape
from typing import List, Optional, Sequence, Tuple

_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 64, 16, 28, 40


def nice_ticks(low: float, high: float, count: int = 5) -> List[float]:
    """About ``count`` round tick values covering [low, high].

    Args:
        low: smallest data value.
        high: largest data value (``high >= low``).
        count: the number of intervals wanted.

    Returns:
        Increasing tick values, spaced by 1, 2 or 5 times a power of ten, from the first
        multiple at or below ``low`` to the first at or above ``high``.
    """
    if not high > low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(low / step)
    ticks = [start * step]
    while ticks[-1] < high:
        ticks.append((start + len(ticks)) * step)
    return ticks


def _finite_points(xs: Sequence[float], ys: Sequence[float]) -> List[Tuple[float, float]]:
    return [(float(x), float(y)) for x, y in zip(xs, ys)
            if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]


def line_chart_svg(
    xs: Sequence[float],
    ys: Sequence[float],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 640,
    height: int = 260,
    markers: Optional[Sequence[float]] = None,
    css_class: str = "chart",
) -> str:
    """Render y against x as an inline SVG line chart.

    Args:
        xs: (P,) x values, e.g. iterations.
        ys: (P,) y values, e.g. losses; pairs with a non-finite or None value are left out.
        title: drawn above the plot.
        x_label: x-axis caption, with units.
        y_label: y-axis caption, with units.
        width: SVG width in CSS pixels.
        height: SVG height in CSS pixels.
        markers: x positions of dashed vertical lines (e.g. phase starts).
        css_class: the ``class`` attribute of the ``<svg>`` element.

    Returns:
        ``<svg ...>...</svg>`` text with one ``<polyline>`` holding one point per finite pair,
        or a "no data" note in the frame when there is none.

    Raises:
        ValueError: if ``xs`` and ``ys`` differ in length.
    """
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys must have the same length, got {len(xs)} and {len(ys)}")
    points = _finite_points(xs, ys)
    left, top = _MARGIN_LEFT, _MARGIN_TOP
    plot_w, plot_h = width - left - _MARGIN_RIGHT, height - top - _MARGIN_BOTTOM
    parts = _frame(title, x_label, y_label, width, height, css_class)
    if not points:
        parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" '
                     'text-anchor="middle">no data</text></svg>')
        return "".join(parts)
    x_ticks = nice_ticks(min(p[0] for p in points), max(p[0] for p in points))
    y_ticks = nice_ticks(min(p[1] for p in points), max(p[1] for p in points))

    def sx(x: float) -> float:
        return left + (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * plot_h

    parts += _tick_marks(x_ticks, y_ticks, sx, sy, top, plot_h, left, plot_w)
    for marker in markers or []:
        if x_ticks[0] <= marker <= x_ticks[-1]:
            parts.append(f'<line x1="{sx(marker):.1f}" y1="{top}" x2="{sx(marker):.1f}" '
                         f'y2="{top + plot_h}" stroke="#bbb" stroke-dasharray="4 3"/>')
    coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    parts.append(f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{coords}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _frame(title: str, x_label: str, y_label: str, width: int, height: int, css_class: str) -> List[str]:
    """The opening ``<svg>`` tag, title, plot frame and axis captions."""
    left, top = _MARGIN_LEFT, _MARGIN_TOP
    plot_w, plot_h = width - left - _MARGIN_RIGHT, height - top - _MARGIN_BOTTOM
    mid_y = top + plot_h / 2
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{escape(css_class)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{width / 2:.1f}" y="18" text-anchor="middle" class="title">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="14" y="{mid_y:.1f}" text-anchor="middle" transform="rotate(-90 14 {mid_y:.1f})">'
        f"{escape(y_label)}</text>",
    ]


def _tick_marks(x_ticks, y_ticks, sx, sy, top, plot_h, left, plot_w) -> List[str]:
    parts = []
    for x in x_ticks:
        parts.append(f'<line x1="{sx(x):.1f}" y1="{top + plot_h}" x2="{sx(x):.1f}" '
                     f'y2="{top + plot_h + 4}" stroke="#999"/>')
        parts.append(f'<text x="{sx(x):.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                     f'class="tick">{_tick_label(x)}</text>')
    for y in y_ticks:
        parts.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{left + plot_w}" y2="{sy(y):.1f}" '
                     'stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" '
                     f'class="tick">{_tick_label(y)}</text>')
    return parts


def _tick_label(value: float) -> str:
    return f"{value:.4g}"
