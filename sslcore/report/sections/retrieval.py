"""Report section ``retrieval``: the mAP / precision@k table and a few queries with their top-5 matches.

Reads, from the benchmark's result directory (:mod:`sslcore.benchmarks.retrieval`),
``metrics.json`` (records ``mAP`` and ``precision@k`` per protocol), ``examples.json`` and the
``thumbnails/*.png`` it names; each thumbnail is embedded as an inline ``data:image/png`` URI
with a green border (relevant), red (not relevant) or grey (junk, ignored by the protocol).
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any, Dict, List, Mapping

from sslcore.benchmarks.metrics import read_metrics
from sslcore.report.sections import SECTIONS

_COLOURS = {"relevant": "#1a7f37", "irrelevant": "#cf222e", "junk": "#8c959f"}
_SETTINGS = ("set", "descriptor", "p", "levels", "layer", "whitening", "whiten_size", "image_size",
             "num_queries", "num_database", "model")


def _table(records: List[Mapping[str, Any]]) -> str:
    by_protocol: Dict[str, Dict[str, float]] = {}
    for record in records:
        by_protocol.setdefault(str(record["params"].get("protocol", "")), {})[record["name"]] = record["value"]
    columns = sorted({name for row in by_protocol.values() for name in row},
                     key=lambda n: (n != "mAP", int(n.split("@")[1]) if "@" in n else 0))
    head = "<th>protocol</th>" + "".join(f"<th>{escape(c)} (%)</th>" for c in columns)
    rows = "".join("<tr><td>" + escape(p) + "</td>" + "".join(
        f'<td class="value">{row[c]:.2f}</td>' if c in row else "<td></td>" for c in columns) + "</tr>"
        for p, row in by_protocol.items())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _image(result_dir: Path, relative: str, colour: str, title: str) -> str:
    path = (result_dir / relative).resolve()
    if result_dir.resolve() not in path.parents or not path.is_file():
        return f'<span title="{escape(title)}">[missing {escape(relative)}]</span>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<img src="data:image/png;base64,{data}" alt="{escape(title)}" title="{escape(title)}" '
            f'style="border:4px solid {colour};margin:2px;width:64px;height:auto;image-rendering:pixelated">')


def _examples(result_dir: Path) -> str:
    path = result_dir / "examples.json"
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    rows = []
    for example in data.get("examples", []):
        query = example["query"]
        cells = [_image(result_dir, query["thumbnail"], "#0969da", f"query {query['name']}")]
        for match in example["top"]:
            kind = "junk" if match.get("junk") else "relevant" if match["relevant"] else "irrelevant"
            cells.append(_image(result_dir, match["thumbnail"], _COLOURS[kind],
                                f"{match['name']} ({kind}, similarity {match['similarity']:.3f})"))
        rows.append(f"<tr><td>{cells[0]}</td><td>{''.join(cells[1:])}</td></tr>")
    legend = ", ".join(f'<span style="color:{c}">{escape(k)}</span>' for k, c in _COLOURS.items())
    return (f"<h3>Top-5 matches (protocol {escape(str(data.get('protocol', '')))})</h3>"
            f"<p>Query (blue border), then its five best database images: {legend}.</p>"
            f"<table><thead><tr><th>query</th><th>top 5</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


@SECTIONS.register("retrieval")
def render_retrieval_section(result_dir: Path) -> str:
    """The retrieval section: metrics table per protocol, settings, example rankings with thumbnails.

    Args:
        result_dir: the directory holding the retrieval benchmark's ``metrics.json``.

    Returns:
        One ``<section>`` HTML fragment (all text escaped, pictures inline).

    Raises:
        FileNotFoundError, ValueError: ``metrics.json`` missing or malformed.
    """
    result_dir = Path(result_dir)
    metrics = read_metrics(result_dir)
    records = metrics["records"]
    settings = {k: records[0]["params"][k] for k in _SETTINGS if records and k in records[0]["params"]}
    listed = ", ".join(f"{escape(str(k))}={escape(str(v))}" for k, v in settings.items())
    layer = escape(str(records[0]["layer"])) if records else ""
    return (f"<section><h3>Instance retrieval ({layer})</h3><p class=\"params\">{listed}</p>"
            f"{_table(records)}{_examples(result_dir)}</section>")
