"""Benchmark results: top-k accuracy and the ``metrics.json`` file every benchmark writes.

``metrics.json`` (design.md section 5) holds one benchmark's numbers, each with its unit, the
layer it was measured on and the protocol parameters that produced it::

    {"benchmark": "knn",
     "records": [{"name": "top1", "value": 85.12, "unit": "%", "layer": "res5avg",
                  "params": {"k": 200, "T": 0.1}}, ...],
     ...extra fields (dataset sizes, protocol name)}

KFP components re-emit the records as KFP Metrics; the run report renders them as a table.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

METRICS_FILENAME = "metrics.json"
_RECORD_FIELDS = ("name", "value", "unit", "layer", "params")

PathLike = Union[str, os.PathLike]


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Top-k accuracy of class scores, in percent.

    A sample counts as correct at k when its label is among the ``min(k, C)`` classes of highest
    score. Ties are broken toward the lower class index (a stable sort), so results do not depend
    on the sorting backend.

    Args:
        scores: (M, C) float, higher means more likely.
        labels: (M,) int, true classes in [0, C).
        ks: the k values to report.

    Returns:
        ``{"top1": float, "top5": float, ...}`` in percent (0..100, rounded to 6 decimals),
        one entry per k.

    Raises:
        ValueError: on mismatched shapes, an empty set, or labels outside [0, C).
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2 or labels.shape != (len(scores),) or len(scores) == 0:
        raise ValueError(
            f"need scores (M, C) and labels (M,) with M > 0, got {scores.shape} and {labels.shape}"
        )
    num_classes = scores.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]"
        )
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = order == labels[:, None]
    counts = {k: int(hits[:, : min(k, num_classes)].any(axis=1).sum()) for k in ks}
    return {f"top{k}": round(100.0 * c / len(labels), 6) for k, c in counts.items()}


def make_record(name: str, value: float, *, unit: str, layer: str,
                params: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Build one metrics record.

    Args:
        name: metric name, e.g. ``"top1"``, ``"mAP"``.
        value: the number (finite), in ``unit``.
        unit: ``"%"`` for accuracies and mAP in percent; ``""`` for unitless numbers.
        layer: the trunk layer measured, e.g. ``"res5avg"``.
        params: the protocol parameters that produced the number (JSON-serialisable).

    Returns:
        ``{"name", "value", "unit", "layer", "params"}``.

    Raises:
        ValueError: if ``value`` is not a finite number.
    """
    record = {"name": name, "value": value, "unit": unit, "layer": layer, "params": dict(params or {})}
    return _check_record(record, 0)


def _check_record(record: Mapping[str, Any], position: int) -> Dict[str, Any]:
    if not isinstance(record, Mapping):
        raise ValueError(f"record {position} must be a dict, got {type(record).__name__}")
    missing = [f for f in _RECORD_FIELDS if f not in record]
    if missing:
        raise ValueError(
            f"record {position} lacks {missing}; a record is {{'name', 'value', 'unit', 'layer', "
            f"'params'}}, got keys {sorted(record)}"
        )
    value = record["value"]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"record {position} ({record['name']}): value must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"record {position} ({record['name']}): value must be finite, got {value}")
    if not isinstance(record["params"], Mapping):
        raise ValueError(f"record {position} ({record['name']}): params must be a dict")
    out = dict(record)
    out["value"] = float(value) if not isinstance(value, (int, np.integer)) else int(value)
    out["params"] = _to_json(dict(record["params"]))
    return out


def _to_json(value: Any) -> Any:
    """Plain-Python copy of ``value`` (numpy scalars and arrays, tuples) for ``json.dumps``."""
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_metrics(out_dir: PathLike, benchmark: str, records: List[Mapping[str, Any]],
                  extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``<out_dir>/metrics.json`` atomically (temporary file, then ``os.replace``).

    Args:
        out_dir: the benchmark's output directory; created if missing.
        benchmark: the benchmark's name, e.g. ``"knn"``, ``"linear"``.
        records: metrics records (see :func:`make_record`); numpy scalars are converted.
        extra: more top-level fields (dataset sizes, protocol description); must not use the
            names ``"benchmark"`` or ``"records"``.

    Returns:
        The path of the written file.

    Raises:
        ValueError: a malformed record, a non-finite value, or ``extra`` overriding a fixed field.
        TypeError: if a value is not JSON-serialisable.
    """
    if not benchmark:
        raise ValueError("benchmark name must be a non-empty string such as 'knn'")
    clash = {"benchmark", "records"} & set(extra or {})
    if clash:
        raise ValueError(f"extra must not set the reserved fields {sorted(clash)}")
    payload = {"benchmark": benchmark, "records": [_check_record(r, i) for i, r in enumerate(records)]}
    payload.update(_to_json(dict(extra or {})))
    text = json.dumps(payload, indent=2, sort_keys=False, allow_nan=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=out, prefix=".tmp-", suffix=".json")
    with os.fdopen(handle, "w") as fh:
        fh.write(text + "\n")
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; metrics are read by other stages and people
    path = out / METRICS_FILENAME
    os.replace(tmp, path)
    return path


def write_skipped(out_dir: PathLike, benchmark: str, reason: str) -> Path:
    """Write the ``metrics.json`` of a benchmark that did not run: no records, and why.

    A pipeline switches a benchmark off with a parameter but still wires its output into the
    report (KFP cannot pass an artifact out of a ``dsl.If`` branch to a task outside it, and
    ``kfp.local`` does not run ``dsl.OneOf`` over artifacts), so the task runs, writes this and
    returns; the report leaves out results without records.

    Args:
        out_dir: the benchmark's output directory; created if missing.
        benchmark: the benchmark's name, e.g. ``"svm"``.
        reason: shown as ``"skipped"`` in the file, e.g. ``"run_svm is false"``.

    Returns:
        The path of the written file.
    """
    return write_metrics(out_dir, benchmark, [], extra={"skipped": reason})


def read_metrics(path_or_dir: PathLike) -> Dict[str, Any]:
    """Read a ``metrics.json`` file, or the one inside a directory.

    Args:
        path_or_dir: the file, or the directory that holds ``metrics.json``.

    Returns:
        The parsed dict with ``"benchmark"``, ``"records"`` and any extra fields.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not JSON or lacks ``benchmark``/``records`` or holds a bad record.
    """
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / METRICS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run the benchmark first or fix the path")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "benchmark" not in data or not isinstance(data.get("records"), list):
        raise ValueError(f"{path} is not a metrics file: it needs 'benchmark' and a 'records' list")
    try:
        data["records"] = [_check_record(r, i) for i, r in enumerate(data["records"])]
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return data
