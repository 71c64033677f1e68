"""Average precision of one class's scores, as VISSL computes it for the VOC07 SVM benchmark.

Protocol: Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010,
http://host.robots.ox.ac.uk/pascal/VOC/ (the devkit's ``VOCap``), as used by VISSL's SVM test
(``vissl/utils/svm_utils/evaluate.py``: ``get_precision_recall`` then ``calculate_ap``). It is
the area under the *interpolated* precision-recall curve over every recall level, not VOC07's
11-point average: samples are ranked by decreasing score; at each rank the precision is replaced
by the best precision at that or any higher recall; AP sums ``(R_i - R_{i-1}) * P_interp_i``
over the ranks where recall grows.

Targets follow VOC's per-class flags (``ImageSets/Main/<class>_<split>.txt``): ``1`` present,
``-1`` absent, ``0`` difficult. Difficult samples are left out of the ranking, as VISSL does at
test time.

Ties. VISSL ranks with ``np.argsort`` and walks the sorted list one sample at a time, so the AP
of tied scores depends on their order in the file. Here the curve is evaluated only at distinct
score thresholds (all samples of one score enter together), so the AP does not depend on row
order; without ties both give the same value.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np


def _check_scores(targets: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    targets = np.asarray(targets)
    scores = np.asarray(scores, dtype=np.float64)
    if targets.ndim != 1 or scores.shape != targets.shape:
        raise ValueError(
            f"targets and scores must both be (N,) for one class, got {targets.shape} and "
            f"{scores.shape}; pass one column of (N, C) arrays at a time"
        )
    if not np.isfinite(scores).all():
        raise ValueError("scores hold NaN or inf; the classifier did not converge to finite weights")
    return targets, scores


def precision_recall_at_thresholds(targets: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Precision and recall at each distinct score threshold, highest threshold first.

    Args:
        targets: (N,) int, ``> 0`` positive, ``< 0`` negative, ``0`` difficult (left out).
        scores: (N,) float, higher means more likely positive (e.g. an SVM's decision_function).

    Returns:
        ``(precision, recall)``: float64 (T,) each, T the number of distinct scores among the
        kept samples; entry t counts every kept sample with score >= the t-th highest score.

    Raises:
        ValueError: on shape mismatch, non-finite scores, or no positive sample.
    """
    targets, scores = _check_scores(targets, scores)
    keep = targets != 0
    positive = targets[keep] > 0
    ranked = scores[keep]
    num_positives = int(positive.sum())
    if num_positives == 0:
        raise ValueError(
            "AP is undefined without a positive sample (target 1) among the non-difficult ones; "
            "drop the class or add samples that contain it"
        )
    order = np.argsort(-ranked, kind="stable")
    ranked, positive = ranked[order], positive[order]
    true_positives = np.cumsum(positive, dtype=np.float64)
    seen = np.arange(1, len(ranked) + 1, dtype=np.float64)
    # the last rank of each run of equal scores: the curve's points
    group_ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    precision = true_positives[group_ends] / seen[group_ends]
    recall = true_positives[group_ends] / num_positives
    return precision, recall


def voc_average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """VOC-style AP (area under the interpolated precision-recall curve) of one class.

    Args:
        targets: (N,) int VOC flags: ``1`` present, ``-1`` absent, ``0`` difficult (ignored).
            Any value > 0 counts as present and < 0 as absent.
        scores: (N,) float classifier scores, higher = more confident the class is present.

    Returns:
        AP in [0, 1].

    Raises:
        ValueError: on shape mismatch, non-finite scores, or no positive sample.

    Example:
        >>> voc_average_precision(np.array([1, -1, 1]), np.array([0.9, 0.8, 0.1]))
        0.8333333333333333
    """
    precision, recall = precision_recall_at_thresholds(targets, scores)
    interpolated = np.maximum.accumulate(precision[::-1])[::-1]
    recall_gain = np.diff(recall, prepend=0.0)
    return float(np.sum(recall_gain * interpolated))


def voc_mean_average_precision(targets: np.ndarray, scores: np.ndarray) -> Tuple[float, np.ndarray]:
    """Per-class VOC AP and their mean over classes.

    Args:
        targets: (N, C) int VOC flags (1 present, -1 absent, 0 difficult).
        scores: (N, C) float scores.

    Returns:
        ``(mAP, ap)``: the mean in [0, 1] and float64 (C,) per-class AP.

    Raises:
        ValueError: if the shapes differ or are not 2-D, or a class has no positive sample.
    """
    targets, scores = np.asarray(targets), np.asarray(scores)
    if targets.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"targets and scores must both be (N, C), got {targets.shape} and {scores.shape}")
    ap = np.zeros(targets.shape[1])
    for c in range(targets.shape[1]):
        try:
            ap[c] = voc_average_precision(targets[:, c], scores[:, c])
        except ValueError as exc:
            raise ValueError(f"class {c}: {exc}") from exc
    return float(ap.mean()), ap
