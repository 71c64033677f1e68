"""The run report: one self-contained HTML page per run (design.md section 5).

The page has no external assets (inline CSS, inline SVG charts), so it opens from the MinIO console,
a KFP HTML artifact viewer or a local file alike. It shows, in order: the title and notes, the
benchmark results with their protocol parameters (every model side by side: pretrained, random
init, raw pixels), each benchmark's own details (per-class AP, low-shot curve, detection and
retrieval examples: :mod:`sslcore.report.sections`), the training curves (loss and learning rate against iteration, dashed lines
at phase starts), and the run's config. All text from inputs is HTML-escaped.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from html import escape
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from sslcore.report.sections import render_section
from sslcore.report.svg import line_chart_svg
from sslcore.report.table import COLUMNS, metrics_to_rows, row_cells
from sslcore.report.train_log import phase_starts, read_train_log, summarize_train_log

PathLike = Union[str, os.PathLike]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
td.value { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.params { font-family: monospace; font-size: 12px; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: 12px; }
.notes { white-space: pre-wrap; } .warning { color: #b00020; }
svg.chart { display: block; margin: 1em 0; font-size: 11px; } svg .title { font-weight: bold; }
"""


def _metrics_section(metrics: Sequence[Mapping[str, Any]]) -> str:
    rows = metrics_to_rows(metrics)
    if not rows:
        return "<section><h2>Benchmarks</h2><p>No benchmark results.</p></section>"
    head = "".join(f"<th>{escape(c)}</th>" for c in COLUMNS)
    body = []
    for row in rows:
        cells = row_cells(row)
        classes = [""] * (len(cells) - 2) + [' class="value"', ' class="params"']
        body.append("<tr>" + "".join(f"<td{k}>{escape(c)}</td>" for c, k in zip(cells, classes)) + "</tr>")
    protocols = {(m.get("benchmark"), m.get("protocol")) for m in metrics if m.get("protocol")}
    notes = "".join(f"<li><b>{escape(str(b))}</b>: {escape(str(p))}</li>" for b, p in sorted(protocols, key=str))
    return (f"<section><h2>Benchmarks</h2><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>" + (f"<ul>{notes}</ul>" if notes else "") + "</section>")


def _details_sections(result_dirs: Sequence[Tuple[str, str, PathLike]]) -> List[str]:
    """One section per benchmark with a renderer, holding each model's fragment in input order."""
    by_benchmark: Dict[str, List[str]] = {}
    for model, benchmark, result_dir in result_dirs:
        fragment = render_section(benchmark, result_dir)
        if fragment:
            by_benchmark.setdefault(benchmark, []).append(f"<h3>{escape(model)}</h3>{fragment}")
    return [f"<section><h2>{escape(benchmark)}: details</h2>{''.join(parts)}</section>"
            for benchmark, parts in by_benchmark.items()]


def _training_section(records: List[Dict[str, Any]]) -> str:
    summary = summarize_train_log(records)
    facts = [f"{summary['records']} log records", f"last iteration {summary['last_iteration']}"]
    if summary["final_loss"] is not None:
        facts.append(f"final loss {summary['final_loss']:.4g}")
    if summary["median_images_per_sec"] is not None:
        facts.append(f"median throughput {summary['median_images_per_sec']:.1f} images/s")
    warning = ""
    if summary["non_finite_losses"]:
        warning = (f'<p class="warning">{summary["non_finite_losses"]} records have a NaN or infinite '
                   "loss (not drawn): training diverged.</p>")
    iterations = [r["iteration"] for r in records]
    markers = phase_starts(records)
    loss_svg = line_chart_svg(iterations, [r.get("loss") for r in records], title="Training loss",
                              x_label="iteration", y_label="loss", markers=markers)
    lr_svg = line_chart_svg(iterations, [r.get("lr") for r in records], title="Learning rate",
                            x_label="iteration", y_label="learning rate", markers=markers)
    return (f"<section><h2>Training</h2><p>{escape(', '.join(facts))}.</p>{warning}"
            f"{loss_svg}{lr_svg}</section>")


def render_html_report(
    *,
    title: str,
    metrics: Sequence[Mapping[str, Any]],
    train_records: Optional[List[Dict[str, Any]]] = None,
    config_yaml: Optional[str] = None,
    notes: Optional[str] = None,
    result_dirs: Sequence[Tuple[str, str, PathLike]] = (),
) -> str:
    """The report page as HTML text (see :func:`write_html_report` for the arguments).

    Args:
        title: page title and heading.
        metrics: ``metrics.json`` dicts, each with a ``"model"`` field.
        train_records: parsed training-log records, or None for no training section.
        config_yaml: the resolved config as YAML text, or None.
        notes: free text shown under the heading, or None.
        result_dirs: ``(model, benchmark, directory)`` of each benchmark result whose details
            section (when its benchmark registers one) follows the results table.

    Returns:
        A complete ``<!DOCTYPE html>`` document.

    Raises:
        ValueError: if a metrics dict lacks ``model``, ``benchmark`` or ``records``.
    """
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f'<header><h1>{escape(title)}</h1><p class="meta">sslcore run report, generated {generated}</p></header>',
    ]
    if notes:
        parts.append(f'<section><h2>Notes</h2><p class="notes">{escape(notes)}</p></section>')
    parts.append(_metrics_section(metrics))
    parts.extend(_details_sections(result_dirs))
    if train_records is not None:
        parts.append(_training_section(train_records))
    if config_yaml is not None:
        parts.append(f"<section><h2>Config</h2><pre>{escape(config_yaml)}</pre></section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_html_report(
    out_path: PathLike,
    *,
    title: str,
    metrics: Sequence[Mapping[str, Any]],
    train_log: Optional[PathLike] = None,
    config_yaml: Optional[str] = None,
    notes: Optional[str] = None,
    result_dirs: Sequence[Tuple[str, str, PathLike]] = (),
) -> Path:
    """Write the run report, one self-contained HTML page, atomically.

    Args:
        out_path: the ``.html`` file to write; parent directories are created.
        title: page title and heading.
        metrics: ``metrics.json`` dicts (:func:`sslcore.benchmarks.metrics.read_metrics`), each
            with a ``"model"`` field naming the weights, e.g. ``"pretrained"``, ``"random init"``,
            ``"raw pixels"``.
        train_log: path of the JSON-lines training log (records ``{"iteration", "phase_idx",
            "loss", "lr", "images_per_sec"}``, see :mod:`sslcore.report.train_log`), or None.
            The loss and LR charts get one polyline point per record with a finite value.
        config_yaml: the resolved config as YAML text, shown in a ``<pre>``, or None.
        notes: free text shown under the heading, or None.
        result_dirs: ``(model, benchmark, directory)`` per benchmark result; a benchmark that
            registers a renderer in :mod:`sslcore.report.sections` gets a details section
            (per-class AP, low-shot curve, examples) built from the files in its directory.

    Returns:
        ``out_path`` as a Path.

    Raises:
        FileNotFoundError: if ``train_log`` is given but missing.
        ValueError: a malformed training log or metrics dict (the message names it).

    Example:
        >>> write_html_report("runs/r1/report.html", title="SimCLR on Fashion-MNIST",
        ...                   metrics=[{"model": "pretrained", **read_metrics("runs/r1/knn")}],
        ...                   train_log="runs/r1/train_log.jsonl")
    """
    records = read_train_log(train_log) if train_log is not None else None
    page = render_html_report(title=title, metrics=metrics, train_records=records,
                              config_yaml=config_yaml, notes=notes, result_dirs=result_dirs)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".html")
    with os.fdopen(handle, "w", encoding="utf-8") as fh:
        fh.write(page)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; the report is meant to be shared
    os.replace(tmp, path)
    return path
