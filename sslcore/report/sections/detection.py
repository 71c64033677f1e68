"""Report section ``detection``: AP table, per-class AP50, the loss curve and test images with boxes.

Reads what :func:`sslcore.benchmarks.detection.run_detection_benchmark` writes into its result
directory: ``metrics.json`` (AP50, mAP, AP75 records with the protocol parameters),
``per_class_ap50.json``, ``train_log.json`` and ``examples.json`` (test images as base64 PNG with
predicted and true boxes). Each example is redrawn :data:`SCALE` times larger with PIL: true boxes
in green, predictions in red with "label score", and embedded as a ``data:`` PNG.

A directory may also hold several runs as subdirectories (e.g. ``pretrained/`` and ``random/``,
each with its own ``metrics.json``): the section then opens with one table comparing them, and
shows each run's details in turn. Whatever is present is rendered; missing optional files are
skipped.
"""

from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from sslcore.benchmarks.metrics import METRICS_FILENAME, read_metrics
from sslcore.report.sections import SECTIONS
from sslcore.report.svg import line_chart_svg

SCALE = 3  # examples are drawn this many times their pixel size
TRUTH_COLOUR = (0, 170, 0)
PREDICTION_COLOUR = (220, 30, 30)
_NAMES = ("AP50", "mAP", "AP75")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def draw_example_png(example: Mapping[str, Any], *, scale: int = SCALE) -> str:
    """One ``examples.json`` entry as a base64 PNG with its boxes drawn.

    Args:
        example: ``{"image_png": base64 PNG, "predictions": [{"box", "label", "score"}],
            "ground_truth": [{"box", "label", "difficult"}]}``, boxes x1, y1, x2, y2 in pixels.
        scale: integer upscaling (nearest neighbour) before drawing, so labels stay readable.

    Returns:
        Base64 text of the drawn PNG (RGB, ``scale`` times the image size).

    Raises:
        ValueError: if ``image_png`` is not a decodable image.
    """
    from PIL import Image, ImageDraw

    try:
        image = Image.open(io.BytesIO(base64.b64decode(example["image_png"]))).convert("RGB")
    except Exception as exc:  # PIL raises several types for broken data
        raise ValueError(f"examples.json: image {example.get('image_id')} is not a PNG: {exc}") from exc
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    for truth in example.get("ground_truth", []):
        box = [v * scale for v in truth["box"]]
        draw.rectangle(box, outline=TRUTH_COLOUR, width=1 if truth.get("difficult") else 2)
    for pred in example.get("predictions", []):
        box = [v * scale for v in pred["box"]]
        draw.rectangle(box, outline=PREDICTION_COLOUR, width=2)
        draw.text((box[0] + 2, max(box[1] - 11, 0)), f"{pred['label']} {pred['score']:.2f}", fill=PREDICTION_COLOUR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _examples_html(examples: Sequence[Mapping[str, Any]]) -> str:
    figures = []
    for example in examples:
        truth = ", ".join(t["label"] for t in example.get("ground_truth", []))
        caption = f"image {example.get('image_id')}: {len(example.get('predictions', []))} detections; true: {truth}"
        figures.append(f'<figure style="display:inline-block;margin:4px"><img alt="{escape(caption)}" '
                       f'src="data:image/png;base64,{draw_example_png(example)}"/>'
                       f'<figcaption style="max-width:{SCALE * int(example.get("width", 96))}px;font-size:11px">'
                       f"{escape(caption)}</figcaption></figure>")
    legend = ("<p>Green: true boxes (thin: difficult). Red: predictions scoring at least 0.5, "
              "with class and score.</p>")
    return legend + "".join(figures)


def _values(metrics: Mapping[str, Any]) -> Dict[str, float]:
    return {r["name"]: float(r["value"]) for r in metrics["records"]}


def _comparison_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    head = "<th>run</th><th>init</th>" + "".join(f"<th>{escape(n)} (%)</th>" for n in _NAMES)
    rows = []
    for name, metrics in runs.items():
        values = _values(metrics)
        init = metrics["records"][0]["params"].get("init", "") if metrics["records"] else ""
        cells = "".join(f'<td class="value">{values[n]:.2f}</td>' if n in values else "<td></td>" for n in _NAMES)
        rows.append(f"<tr><td>{escape(name)}</td><td>{escape(str(init))}</td>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _per_class_table(per_class: Mapping[str, float]) -> str:
    head = "".join(f"<th>{escape(str(name))}</th>" for name in per_class)
    cells = "".join(f'<td class="value">{float(v):.1f}</td>' for v in per_class.values())
    return f"<p>AP50 per class (%):</p><table><thead><tr>{head}</tr></thead><tbody><tr>{cells}</tr></tbody></table>"


def _run_html(result_dir: Path, metrics: Mapping[str, Any]) -> str:
    parts: List[str] = []
    params = metrics["records"][0]["params"] if metrics["records"] else {}
    setting = ", ".join(f"{k}={params[k]}" for k in ("init", "backbone", "iterations", "batch_size", "lr",
                                                      "min_size") if k in params)
    parts.append(f'<p class="params">{escape(setting)}</p>')
    per_class = _read_json(result_dir / "per_class_ap50.json")
    if per_class:
        parts.append(_per_class_table(per_class))
    log = _read_json(result_dir / "train_log.json") or []
    if log:
        parts.append(line_chart_svg([r["iteration"] for r in log], [r["loss"] for r in log],
                                    title="detection training loss (sum of the four Faster R-CNN losses)",
                                    x_label="iteration", y_label="loss"))
    examples = _read_json(result_dir / "examples.json")
    if examples:
        parts.append(_examples_html(examples))
    return "".join(parts)


@SECTIONS.register("detection")
def render_detection_section(result_dir: Path) -> str:
    """The detection section: AP table, per-class AP50, loss curve and annotated test images.

    Args:
        result_dir: a detection result directory (with ``metrics.json``), or a directory whose
            subdirectories are detection result directories (e.g. ``pretrained/``, ``random/``),
            which are compared in one table.

    Returns:
        One ``<section>`` HTML fragment (text escaped, the chart as inline SVG, images as
        ``data:`` PNG).

    Raises:
        FileNotFoundError: no ``metrics.json`` in ``result_dir`` or its subdirectories.
        ValueError: a malformed ``metrics.json`` or example image.
    """
    result_dir = Path(result_dir)
    runs: Dict[str, Path] = {}
    if (result_dir / METRICS_FILENAME).is_file():
        runs[result_dir.name] = result_dir
    for child in sorted(p for p in result_dir.iterdir() if p.is_dir()) if result_dir.is_dir() else []:
        if (child / METRICS_FILENAME).is_file():
            runs[child.name] = child
    if not runs:
        raise FileNotFoundError(f"{result_dir} holds no detection metrics.json (nor do its subdirectories); "
                                "run `sslcore benchmark detection` first")
    metrics = {name: read_metrics(path) for name, path in runs.items()}
    parts = ["<section><h3>Detection: Faster R-CNN, VOC07 AP50 and COCO mAP</h3>", _comparison_table(metrics)]
    for name, path in runs.items():
        if len(runs) > 1:
            parts.append(f"<h4>{escape(name)}</h4>")
        parts.append(_run_html(path, metrics[name]))
    parts.append("</section>")
    return "".join(parts)
