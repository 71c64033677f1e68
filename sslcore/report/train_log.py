"""Read the training log (JSON lines) that the report draws its curves from.

One JSON object per line, written by the training loop as it runs::

    {"iteration": 100, "phase_idx": 0, "loss": 5.31, "lr": 0.3, "images_per_sec": 812.5}

``iteration`` (int, global step) and ``loss`` (float) are required; ``phase_idx`` (int, epoch or
phase number), ``lr`` (float, learning rate of the first parameter group) and ``images_per_sec``
(float, training throughput over all processes) are optional. Blank lines are skipped. VISSL's
``stdout.json`` names the phase ``train_phase_idx``; that name is read too.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

REQUIRED_FIELDS = ("iteration", "loss")


def read_train_log(path: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    """Parse a JSON-lines training log, in file order.

    Args:
        path: the ``.jsonl`` file.

    Returns:
        One dict per non-blank line.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: a line is not a JSON object or lacks ``iteration``/``loss``; the message
            gives the line number.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"training log {file} does not exist; pass the run's train log path or None")
    records = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}:{number}: not valid JSON ({exc.msg}); each line must be one object") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{file}:{number}: expected a JSON object, got {type(record).__name__}")
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise ValueError(f"{file}:{number}: record lacks {missing}; every line needs iteration and loss")
        records.append(record)
    return records


def summarize_train_log(records: List[Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Headline numbers of a training log.

    Args:
        records: as returned by :func:`read_train_log`.

    Returns:
        ``{"records", "last_iteration", "final_loss", "median_images_per_sec",
        "non_finite_losses"}``; a value is None when the log has nothing to compute it from.
    """
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), (int, float))]
    speeds = [r["images_per_sec"] for r in records
              if isinstance(r.get("images_per_sec"), (int, float)) and math.isfinite(r["images_per_sec"])]
    return {
        "records": len(records),
        "last_iteration": records[-1]["iteration"] if records else None,
        "final_loss": losses[-1] if losses else None,
        "median_images_per_sec": statistics.median(speeds) if speeds else None,
        "non_finite_losses": sum(1 for v in losses if not math.isfinite(v)),
    }


def phase_starts(records: List[Dict[str, Any]]) -> List[float]:
    """Iterations at which ``phase_idx`` (or ``train_phase_idx``) changes; not the first phase's start.

    Args:
        records: as returned by :func:`read_train_log`.

    Returns:
        The iteration of each record whose ``phase_idx`` differs from the previous record's.
    """
    starts, previous = [], None
    for record in records:
        phase = record.get("phase_idx", record.get("train_phase_idx"))
        if previous is not None and phase is not None and phase != previous:
            starts.append(float(record["iteration"]))
        previous = phase if phase is not None else previous
    return starts
