"""Report sections of the through-the-trunk benchmarks: ``linear_eval`` and ``finetune``.

Reads ``metrics.json`` written by :func:`sslcore.benchmarks.finetune.run_finetune_benchmark` (or by
the train engine's test phase, :mod:`sslcore.engine.evaluation`): a top-1/top-5 table per layer
with the protocol parameters, and the test top-1 per epoch of each layer as an inline SVG chart
(from the file's ``history``).
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any, Dict, List

from sslcore.benchmarks.metrics import read_metrics
from sslcore.report.sections import SECTIONS
from sslcore.report.svg import line_chart_svg

_TITLES = {"linear_eval": "Linear evaluation through the frozen trunk (several layers)",
           "finetune": "Fine-tuning"}
_SHOWN_PARAMS = ("mode", "fraction", "epochs", "lr", "head_lr", "schedule", "milestones",
                 "batch_size", "weight_decay", "trunk_frozen", "weights")


def _table(metrics: Dict[str, Any]) -> str:
    by_layer: Dict[str, Dict[str, float]] = {}
    for record in metrics["records"]:
        by_layer.setdefault(str(record["layer"]), {})[str(record["name"])] = float(record["value"])
    names = sorted({n for accs in by_layer.values() for n in accs}, key=lambda n: (len(n), n))
    head = "".join(f"<th>{escape(n)} (%)</th>" for n in names)
    rows = "".join(
        f"<tr><td>{escape(layer)}</td>"
        + "".join(f'<td class="value">{accs[n]:.2f}</td>' if n in accs else "<td></td>" for n in names)
        + "</tr>" for layer, accs in by_layer.items())
    return f"<table><thead><tr><th>layer</th>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _params_line(metrics: Dict[str, Any]) -> str:
    params = metrics["records"][0]["params"] if metrics["records"] else {}
    shown = [f"{k}={params[k]}" for k in _SHOWN_PARAMS if params.get(k) is not None]
    sizes = metrics.get("sizes") or {}
    shown += [f"{k}={v}" for k, v in sizes.items()]
    return f'<p class="params">{escape(", ".join(shown))}</p>' if shown else ""


def _charts(metrics: Dict[str, Any]) -> str:
    tested = [h for h in metrics.get("history") or [] if h.get("test_accuracy_list_meter")]
    layers: List[str] = list(metrics.get("layers") or [])
    charts = []
    for layer in layers:
        epochs = [int(h["epoch"]) for h in tested]
        top1 = [h["test_accuracy_list_meter"].get(layer, {}).get("top1") for h in tested]
        charts.append(line_chart_svg(epochs, top1, title=f"Test top-1 per epoch: {layer}",
                                     x_label="epoch", y_label="top-1 accuracy (%)",
                                     width=420, height=220))
    return "".join(charts)


def render_through_trunk_section(result_dir: Path) -> str:
    """One ``<section>``: the per-layer top-1/top-5 table, the parameters and per-epoch charts.

    Args:
        result_dir: a directory holding the benchmark's ``metrics.json``.

    Returns:
        Self-contained HTML (text escaped, charts as inline SVG).

    Raises:
        FileNotFoundError: no ``metrics.json`` in ``result_dir``.
        ValueError: ``metrics.json`` is malformed.
    """
    metrics = read_metrics(result_dir)
    benchmark = str(metrics.get("benchmark"))
    title = _TITLES.get(benchmark, benchmark)
    protocol = metrics.get("protocol")
    note = f"<p>{escape(str(protocol))}</p>" if protocol else ""
    return (f"<section><h2>{escape(title)}</h2>{note}{_table(metrics)}{_params_line(metrics)}"
            f"{_charts(metrics)}</section>")


@SECTIONS.register("linear_eval")
def render_linear_eval_section(result_dir: Path) -> str:
    """The ``linear_eval`` section (see :func:`render_through_trunk_section`)."""
    return render_through_trunk_section(result_dir)


@SECTIONS.register("finetune")
def render_finetune_section(result_dir: Path) -> str:
    """The ``finetune`` section (see :func:`render_through_trunk_section`)."""
    return render_through_trunk_section(result_dir)
