"""Benchmark sections of the run report: one renderer per benchmark, chosen by its metrics.json.

Each benchmark that has more to show than rows of the metrics table (per-class AP, a low-shot
curve, detection or retrieval examples) registers a renderer here. A renderer takes the
benchmark's result directory (the one holding its ``metrics.json`` and any files it wrote beside
it) and returns one self-contained HTML fragment: a ``<section>`` with every text from inputs
escaped, charts as inline SVG and pictures as inline ``data:`` PNGs, no external assets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Union

from sslcore.registry import Registry

PathLike = Union[str, os.PathLike]
SectionRenderer = Callable[[Path], str]

SECTIONS: Registry = Registry("report section")


def render_section(benchmark: str, result_dir: PathLike) -> str:
    """The HTML section of ``benchmark``'s results in ``result_dir``; "" when it registers none."""
    if benchmark not in SECTIONS:
        return ""
    return SECTIONS.get(benchmark)(Path(result_dir))
from sslcore.report.sections import retrieval  # noqa: E402,F401  (registers)
from sslcore.report.sections import clusterfit  # noqa: E402,F401  (registers)
from sslcore.report.sections import svm  # noqa: E402,F401  (registers)
from sslcore.report.sections import low_shot  # noqa: E402,F401  (registers)
from sslcore.report.sections import finetune  # noqa: E402,F401  (registers)
from sslcore.report.sections import detection  # noqa: E402,F401  (registers)
