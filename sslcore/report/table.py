"""Benchmark results as table rows, and as a plain-text table for the terminal.

A row is one number with everything needed to read it::

    {"model": "pretrained", "benchmark": "knn", "layer": "res5avg", "metric": "top1",
     "value": 85.12, "unit": "%", "params": {"k": 200, "T": 0.1}}

``model`` says which weights produced the features ("pretrained", "random init", "raw pixels"),
so learned features are always read next to their baselines (design.md section 8).
"""

from __future__ import annotations

import json
import textwrap
from typing import Any, Dict, Iterable, List, Mapping, Sequence

COLUMNS = ("model", "benchmark", "layer", "metric", "value", "protocol params")
_MAX_NARROW = 18  # widest a column other than "protocol params" may grow, in characters
_GAP = "  "


def metrics_to_rows(metrics: Iterable[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Flatten ``metrics.json`` dicts, each with a ``"model"`` field, into table rows.

    Args:
        metrics: dicts as read by :func:`sslcore.benchmarks.metrics.read_metrics`, plus
            ``"model"``; a dict that is already a row (has ``"metric"``) passes through.

    Returns:
        One row per record, in order: ``{"model", "benchmark", "layer", "metric", "value",
        "unit", "params"}``.

    Raises:
        ValueError: if an entry lacks ``model``, ``benchmark`` or ``records``.
    """
    rows: List[Dict[str, Any]] = []
    for i, entry in enumerate(metrics):
        if "metric" in entry and "records" not in entry:
            rows.append({"unit": "", "params": {}, **entry})
            continue
        missing = [f for f in ("model", "benchmark", "records") if f not in entry]
        if missing:
            raise ValueError(
                f"metrics[{i}] lacks {missing}; pass each metrics.json dict with the model that "
                "produced it, e.g. {'model': 'pretrained', **read_metrics(path)}"
            )
        for record in entry["records"]:
            rows.append({"model": entry["model"], "benchmark": entry["benchmark"],
                         "layer": record.get("layer", ""), "metric": record.get("name", ""),
                         "value": record.get("value"), "unit": record.get("unit", ""),
                         "params": record.get("params", {})})
    return rows


def format_value(value: Any, unit: str = "") -> str:
    """A metric value for display: floats with 2 decimals, then the unit (``"85.12 %"``).

    Args:
        value: the number (or anything printable).
        unit: appended after a space when not empty.

    Returns:
        The text.
    """
    if isinstance(value, float):
        text = f"{value:.2f}"
    else:
        text = str(value)
    return f"{text} {unit}" if unit else text


def format_params(params: Mapping[str, Any]) -> str:
    """Protocol parameters as ``"k=200, T=0.1"`` (lists and dicts as compact JSON).

    Args:
        params: parameter name to value.

    Returns:
        The text; ``"-"`` when there are none.
    """
    if not params:
        return "-"
    parts = []
    for name, value in params.items():
        shown = json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else value
        parts.append(f"{name}={shown}")
    return ", ".join(parts)


def row_cells(row: Mapping[str, Any]) -> List[str]:
    """The display text of a row, one string per entry of :data:`COLUMNS`."""
    return [str(row.get("model", "")), str(row.get("benchmark", "")), str(row.get("layer", "")),
            str(row.get("metric", "")), format_value(row.get("value"), str(row.get("unit", ""))),
            format_params(row.get("params") or {})]


def _widths(table: Sequence[Sequence[str]], total: int) -> List[int]:
    widths = [min(max(len(r[c]) for r in table), _MAX_NARROW) for c in range(len(COLUMNS) - 1)]
    used = sum(widths) + len(_GAP) * (len(COLUMNS) - 1)
    natural = max(len(r[-1]) for r in table)
    widths.append(min(natural, max(total - used, 20)))
    return widths


def format_metrics_table(rows: Iterable[Mapping[str, Any]], *, width: int = 100) -> str:
    """A plain-text table of benchmark results, readable in a terminal ``width`` columns wide.

    Columns: model, benchmark, layer, metric, value (with unit), protocol params. Narrow columns
    grow to at most 18 characters; the protocol-params column takes the rest of ``width`` and long
    cells wrap onto continuation lines, so nothing is cut off.

    Args:
        rows: table rows (see the module docstring), or ``metrics.json`` dicts with a
            ``"model"`` field (expanded by :func:`metrics_to_rows`).
        width: the terminal width in characters.

    Returns:
        The table as text, a header line and a rule first; ``"(no results)"`` when empty.

    Raises:
        ValueError: if a metrics dict lacks ``model``.

    Example:
        >>> print(format_metrics_table([{"model": "raw pixels", "benchmark": "knn",
        ...     "layer": "pixels", "metric": "top1", "value": 84.6, "unit": "%",
        ...     "params": {"k": 20, "T": 0.07}}]))
    """
    body = [row_cells(r) for r in metrics_to_rows(rows)]
    if not body:
        return "(no results)"
    header = list(COLUMNS)
    widths = _widths([header] + body, width)
    lines = [_GAP.join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             _GAP.join("-" * w for w in widths)]
    for cells in body:
        wrapped = [textwrap.wrap(c, w, break_on_hyphens=False) or [""] for c, w in zip(cells, widths)]
        for i in range(max(len(w) for w in wrapped)):
            parts = [(w[i] if i < len(w) else "").ljust(wd) for w, wd in zip(wrapped, widths)]
            lines.append(_GAP.join(parts).rstrip())
    return "\n".join(lines)


_HEADLINE_PARAMS = {"knn": ("k", "T"), "linear": ("epochs",)}


def format_headline_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """One line per model, one column per top-1 setting: the comparison a person reads first.

    Columns are ``<benchmark> top-1`` with the protocol's defining parameters (k and T for kNN,
    epochs for linear); the full parameters are in :func:`format_metrics_table`.

    Args:
        rows: metrics.json dicts with a ``model`` field, or flat rows (:func:`metrics_to_rows`).

    Returns:
        The table as text; "(no top-1 results)" when there are none.
    """
    flat = [r for r in metrics_to_rows(rows) if r.get("metric") == "top1"]
    if not flat:
        return "(no top-1 results)"
    columns: List[str] = []
    cells: Dict[str, Dict[str, str]] = {}
    for row in flat:
        keys = _HEADLINE_PARAMS.get(row["benchmark"], ())
        params = row.get("params") or {}
        label = f"{row['benchmark']} top-1" + "".join(f" {k}={params[k]}" for k in keys if k in params)
        if label not in columns:
            columns.append(label)
        cells.setdefault(row["model"], {})[label] = format_value(row["value"], row.get("unit", ""))
    table = [["model", *columns]] + [[m, *(c.get(col, "-") for col in columns)]
                                     for m, c in cells.items()]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = [_GAP.join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, _GAP.join("-" * w for w in widths))
    return "\n".join(lines)
