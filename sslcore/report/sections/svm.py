"""Report section of the VOC07 SVM benchmark: per-class test AP and the cross-validation AP grid.

Reads what :func:`sslcore.benchmarks.svm.run_svm_benchmark` writes: ``metrics.json`` (mAP per
layer), ``per_class_ap.json`` (test AP and chosen cost per class) and ``cv_ap.json`` (mean
3-fold CV AP per class and cost). Per layer it shows a table of class, test AP and chosen cost,
then the CV grid with each class's chosen cost in bold.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any, Dict, List

from sslcore.benchmarks.metrics import read_metrics
from sslcore.report.sections import SECTIONS

CV_AP_FILENAME = "cv_ap.json"  # as written by sslcore.benchmarks.svm (not imported: it needs sklearn)
PER_CLASS_AP_FILENAME = "per_class_ap.json"


def _read_json(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _cost(value: float) -> str:
    return f"{value:g}"


def _per_class_table(layer: str, per_class: Dict[str, Any], mean_ap: float) -> str:
    rows = [f"<tr><td>{escape(str(name))}</td><td>{ap:.2f}</td><td>{escape(_cost(cost))}</td></tr>"
            for name, ap, cost in zip(per_class["classes"], per_class["ap"], per_class["chosen_cost"])]
    return (f"<table><caption>{escape(layer)}: test AP per class (VOC interpolated AP, %), "
            f"mAP {mean_ap:.2f}%</caption>"
            "<tr><th>class</th><th>test AP (%)</th><th>chosen cost C</th></tr>"
            + "".join(rows) + "</table>")


def _cv_grid_table(layer: str, grid: Dict[str, Any], classes: List[str]) -> str:
    costs = grid["costs"]
    header = "".join(f"<th>C={escape(_cost(c))}</th>" for c in costs)
    rows = []
    for i, (values, chosen) in enumerate(zip(grid["cv_ap"], grid["chosen_cost"])):
        name = classes[i] if i < len(classes) else str(i)
        cells = "".join(f"<td><b>{v:.2f}</b></td>" if c == chosen else f"<td>{v:.2f}</td>"
                        for v, c in zip(values, costs))
        rows.append(f"<tr><td>{escape(str(name))}</td>{cells}</tr>")
    return (f"<table><caption>{escape(layer)}: mean 3-fold cross-validation AP (%) per class and "
            "cost; bold = chosen</caption>"
            f"<tr><th>class</th>{header}</tr>" + "".join(rows) + "</table>")


@SECTIONS.register("svm")
def render_svm_section(result_dir: Path) -> str:
    """HTML ``<section>`` for the SVM results in ``result_dir``.

    Args:
        result_dir: directory holding ``metrics.json``, ``per_class_ap.json`` and ``cv_ap.json``.

    Returns:
        One self-contained ``<section>`` with, per layer, the per-class AP table and the CV grid;
        a layer whose detail files are missing shows its mAP only.

    Raises:
        FileNotFoundError: if ``metrics.json`` is missing.
        ValueError: if ``metrics.json`` is malformed.
    """
    result_dir = Path(result_dir)
    metrics = read_metrics(result_dir)
    per_class = _read_json(result_dir / PER_CLASS_AP_FILENAME)
    grids = _read_json(result_dir / CV_AP_FILENAME)
    parts = ['<section class="benchmark-svm"><h3>VOC07 linear SVM</h3>',
             f"<p>{escape(str(metrics.get('protocol', 'linear SVM per class')))}: one-vs-rest linear SVM "
             "per class on L2-normalised features, cost chosen by 3-fold cross-validated AP.</p>"]
    for record in metrics["records"]:
        layer = str(record["layer"])
        parts.append(f"<h4>{escape(layer)}: mAP {record['value']:.2f}%</h4>")
        if layer in per_class:
            parts.append(_per_class_table(layer, per_class[layer], record["value"]))
        if layer in grids:
            classes = per_class.get(layer, {}).get("classes", [])
            parts.append(_cv_grid_table(layer, grids[layer], classes))
    parts.append("</section>")
    return "".join(parts)
