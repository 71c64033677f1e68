"""Ranking metrics of the instance retrieval benchmark: average precision and precision@k.

Protocol of the revisited Oxford and Paris benchmarks, which VISSL's instance retrieval
benchmark evaluates with (its ``compute_map``):

- [0] Radenović, Iscen, Tolias, Avrithis & Chum, "Revisiting Oxford and Paris: Large-Scale Image
  Retrieval Benchmarking", CVPR 2018, https://arxiv.org/abs/1803.11285

Each query ranks the whole database. Database images marked *junk* for a query are deleted
from its ranked list before anything is counted, so they neither help nor hurt. Average
precision is the area under the precision-recall curve integrated with trapezoids: the i-th
positive (0-based, at 0-based rank ``r_i`` after junk removal) adds
``(P_before + P_at) / (2 * n_pos)`` with ``P_before = i / r_i`` (1 when ``r_i = 0``) and
``P_at = (i + 1) / (r_i + 1)``. Queries without any positive are left out of the mean.

The revisited sets label each query's positives *easy* or *hard*; three protocols follow
(:data:`PROTOCOLS`): easy (positives: easy; ignored: hard and junk), medium (positives: easy and
hard; ignored: junk) and hard (positives: hard; ignored: easy and junk).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

DEFAULT_KAPPAS: Tuple[int, ...] = (1, 5, 10)

# protocol -> (ground-truth lists that are positives, lists that are ignored like junk)
PROTOCOLS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}


def average_precision(positive_ranks: np.ndarray, num_positives: int) -> float:
    """Trapezoidal average precision from the ranks of the retrieved positives ([0], eq. of VISSL).

    Args:
        positive_ranks: (n,) int, increasing 0-based ranks of the positives in the ranked list
            (junk already removed); n <= ``num_positives`` when the list is truncated.
        num_positives: how many positives the query has, >= 1 (the recall denominator).

    Returns:
        AP in [0, 1] (a fraction, not percent).

    Raises:
        ValueError: ``num_positives`` < 1, more ranks than positives, or ranks not increasing.

    Example:
        >>> average_precision(np.array([0, 2]), 2)  # hit, miss, hit
        0.7916666666666666
    """
    ranks = np.asarray(positive_ranks, dtype=np.float64).reshape(-1)
    if num_positives < 1:
        raise ValueError(f"num_positives must be >= 1, got {num_positives}; skip queries without positives")
    if len(ranks) > num_positives:
        raise ValueError(f"{len(ranks)} positive ranks but num_positives={num_positives}")
    if len(ranks) and (np.any(np.diff(ranks) <= 0) or ranks[0] < 0):
        raise ValueError(f"positive_ranks must be distinct, increasing and >= 0, got {ranks.tolist()}")
    found = np.arange(len(ranks), dtype=np.float64)
    before = np.where(ranks == 0, 1.0, found / np.maximum(ranks, 1.0))
    at = (found + 1.0) / (ranks + 1.0)
    return float(((before + at) / 2.0).sum() / num_positives)


def positive_ranks(ranking: np.ndarray, positives: Sequence[int], junk: Sequence[int] = ()) -> np.ndarray:
    """0-based ranks of ``positives`` in ``ranking`` once the ``junk`` ids are deleted from it.

    Args:
        ranking: (N,) int database ids, best match first.
        positives: database ids relevant to the query.
        junk: database ids to ignore (neither relevant nor irrelevant).

    Returns:
        (n,) int64 increasing ranks; positives absent from ``ranking`` are not listed.
    """
    ranking = np.asarray(ranking).reshape(-1)
    keep = ~np.isin(ranking, np.asarray(list(junk), dtype=np.int64))
    kept = ranking[keep]
    return np.flatnonzero(np.isin(kept, np.asarray(list(positives), dtype=np.int64))).astype(np.int64)


def precision_at_k(ranks: np.ndarray, kappas: Sequence[int] = DEFAULT_KAPPAS) -> np.ndarray:
    """Precision at each k of one query, as the revisited benchmark [0] defines it.

    With ``last`` = the 1-based rank of the last retrieved positive, precision@k is the number
    of positives within the first ``k' = min(k, last)`` places divided by ``k'``: a query with
    fewer than k positives is not penalised for the places it cannot fill. When the last
    positive lies at or beyond place k this is the ordinary precision@k.

    Args:
        ranks: (n,) int, increasing 0-based positive ranks (junk removed), n >= 1.
        kappas: the k values, each >= 1.

    Returns:
        (len(kappas),) float64 in [0, 1].

    Raises:
        ValueError: empty ``ranks`` or a k < 1.
    """
    ranks = np.asarray(ranks).reshape(-1)
    if len(ranks) == 0:
        raise ValueError("precision@k needs at least one retrieved positive")
    if any(int(k) < 1 for k in kappas):
        raise ValueError(f"every k must be >= 1, got {list(kappas)}")
    one_based = ranks + 1
    out = []
    for k in kappas:
        cut = min(int(one_based.max()), int(k))
        out.append((one_based <= cut).sum() / cut)
    return np.asarray(out, dtype=np.float64)


def compute_map(rankings: np.ndarray, ground_truth: Sequence[Mapping[str, Sequence[int]]],
                kappas: Sequence[int] = DEFAULT_KAPPAS) -> Dict[str, object]:
    """Mean average precision and mean precision@k over queries (VISSL's ``compute_map``, [0]).

    Args:
        rankings: (Q, N) int, row q holds every database id ranked for query q, best first.
        ground_truth: Q dicts with ``"ok"`` (positive database ids) and optional ``"junk"``.
        kappas: k values of precision@k.

    Returns:
        ``{"mAP": float, "precision": (len(kappas),) float64, "aps": (Q,) float64 (NaN for a
        query without positives), "num_evaluated": int, "num_empty": int}``; mAP and
        precision are fractions in [0, 1] (NaN when no query has a positive).

    Raises:
        ValueError: ``rankings`` is not (Q, N) with Q = len(ground_truth).

    Example:
        >>> compute_map(np.array([[2, 0, 1]]), [{"ok": [0], "junk": [2]}])["mAP"]
        1.0
    """
    rankings = np.asarray(rankings)
    if rankings.ndim != 2 or len(rankings) != len(ground_truth):
        raise ValueError(f"rankings must be (Q, N) with Q = {len(ground_truth)} queries, got {rankings.shape}")
    aps = np.full(len(rankings), np.nan)
    precisions = np.full((len(rankings), len(kappas)), np.nan)
    for q, (ranking, gnd) in enumerate(zip(rankings, ground_truth)):
        ok = list(gnd["ok"])
        if not ok:
            continue
        ranks = positive_ranks(ranking, ok, gnd.get("junk", ()))
        aps[q] = average_precision(ranks, len(ok))
        if len(ranks):
            precisions[q] = precision_at_k(ranks, kappas)
        else:
            precisions[q] = 0.0
    evaluated = ~np.isnan(aps)
    return {"mAP": float(aps[evaluated].mean()) if evaluated.any() else float("nan"),
            "precision": precisions[evaluated].mean(axis=0) if evaluated.any()
            else np.full(len(kappas), np.nan),
            "aps": aps, "num_evaluated": int(evaluated.sum()), "num_empty": int((~evaluated).sum())}


def protocol_ground_truth(ground_truth: Sequence[Mapping[str, Sequence[int]]],
                          protocol: str) -> List[Dict[str, List[int]]]:
    """Turn revisited ground truth (easy/hard/junk per query) into ok/junk lists for a protocol.

    Args:
        ground_truth: Q dicts with ``"easy"``, ``"hard"`` and ``"junk"`` database id lists.
        protocol: ``"easy"``, ``"medium"`` or ``"hard"`` (see :data:`PROTOCOLS`).

    Returns:
        Q dicts ``{"ok": [...], "junk": [...]}`` for :func:`compute_map`.

    Raises:
        ValueError: unknown protocol, or a query lacks one of the three lists.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is unknown; use one of {sorted(PROTOCOLS)}")
    positive, ignored = PROTOCOLS[protocol]
    out = []
    for q, gnd in enumerate(ground_truth):
        missing = [k for k in ("easy", "hard", "junk") if k not in gnd]
        if missing:
            raise ValueError(f"ground truth of query {q} lacks {missing}; the revisited layout "
                             "lists 'easy', 'hard' and 'junk' database ids per query")
        out.append({"ok": [int(i) for k in positive for i in gnd[k]],
                    "junk": [int(i) for k in ignored for i in gnd[k]]})
    return out
