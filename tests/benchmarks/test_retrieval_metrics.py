"""Retrieval metrics against hand-computed ranked lists (revisited Oxford/Paris protocol)."""

import numpy as np
import pytest

from sslcore.benchmarks.retrieval_metrics import (
    average_precision,
    compute_map,
    positive_ranks,
    precision_at_k,
    protocol_ground_truth,
)


def _trapezoid_ap(labels, num_positives):
    """Plain PR-curve walk: area of trapezoids between consecutive recall levels."""
    area, hits = 0.0, 0
    for position, is_positive in enumerate(labels, start=1):
        if is_positive:
            precision_before = hits / (position - 1) if position > 1 else 1.0
            hits += 1
            area += (precision_before + hits / position) / 2 / num_positives
    return area


def test_hand_computed_list_with_junk():
    # ranking 5 1 3 0 2 4; positives {1, 0}; junk {3} -> kept list 5 1 0 2 4: positives at ranks 1, 2
    ranks = positive_ranks(np.array([5, 1, 3, 0, 2, 4]), [1, 0], [3])
    assert ranks.tolist() == [1, 2]
    expected = ((0 / 1 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2) / 2
    assert average_precision(ranks, 2) == pytest.approx(expected)


@pytest.mark.parametrize("labels,num_positives", [
    ([1, 1, 0, 0], 2), ([0, 1, 0, 1, 1], 3), ([0, 0, 0, 1], 1), ([1, 0, 1, 0, 0, 1], 4), ([0, 0], 2)])
def test_average_precision_matches_a_plain_pr_curve_walk(labels, num_positives):
    ranks = np.flatnonzero(labels)
    assert average_precision(ranks, num_positives) == pytest.approx(_trapezoid_ap(labels, num_positives))


def test_junk_anywhere_leaves_ap_unchanged_and_perfect_ranking_scores_one():
    rng = np.random.default_rng(0)
    base = np.array([7, 2, 9, 4, 1, 0])
    clean = average_precision(positive_ranks(base, [2, 4, 0]), 3)
    for _ in range(5):
        with_junk = np.insert(base, rng.integers(0, len(base) + 1, size=2), [100, 101])
        assert average_precision(positive_ranks(with_junk, [2, 4, 0], [100, 101]), 3) == pytest.approx(clean)
    assert average_precision(positive_ranks(np.array([3, 1, 2]), [3, 1]), 2) == 1.0


def test_precision_at_k_caps_k_at_the_last_positive():
    # positives at 1-based places 1, 3, 4: P@1 = 1; P@5 and P@10 use k' = 4 -> 3/4
    assert precision_at_k(np.array([0, 2, 3]), (1, 5, 10)).tolist() == pytest.approx([1.0, 0.75, 0.75])
    # many positives: the ordinary precision@k
    ranks = np.array([0, 2, 3, 5, 8, 9, 12, 20])
    expected = [(ranks < k).sum() / k for k in (1, 5, 10)]
    assert precision_at_k(ranks, (1, 5, 10)).tolist() == pytest.approx(expected)


def test_compute_map_skips_queries_without_positives():
    rankings = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 2, 3]])
    gnd = [{"ok": [0], "junk": []}, {"ok": [0, 1], "junk": [2]}, {"ok": [], "junk": [1]}]
    result = compute_map(rankings, gnd, (1, 5))
    ap1 = 1.0
    ap2 = ((0 / 1 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2) / 2  # list 3 1 0 -> positives at ranks 1, 2
    assert result["num_empty"] == 1 and result["num_evaluated"] == 2
    assert np.isnan(result["aps"][2])
    assert result["mAP"] == pytest.approx((ap1 + ap2) / 2)
    p1 = (1.0 + 0.0) / 2
    p5 = (1.0 + 2 / 3) / 2  # query 2: last positive at place 3 -> 2/3
    assert result["precision"].tolist() == pytest.approx([p1, p5])


def test_easy_medium_hard_protocols():
    gnd = [{"easy": [0], "hard": [2], "junk": [1]}]
    ranking = np.array([[3, 2, 1, 0]])
    maps = {p: compute_map(ranking, protocol_ground_truth(gnd, p))["mAP"] for p in ("easy", "medium", "hard")}
    # easy: list 3 0 (hard 2 and junk 1 removed) -> rank 1; hard: list 3 2 -> rank 1
    assert maps["easy"] == pytest.approx((0 + 1 / 2) / 2)
    assert maps["hard"] == pytest.approx((0 + 1 / 2) / 2)
    # medium: list 3 2 0 -> ranks 1, 2
    assert maps["medium"] == pytest.approx(((0 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    assert protocol_ground_truth(gnd, "medium") == [{"ok": [0, 2], "junk": [1]}]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="num_positives"):
        average_precision(np.array([0]), 0)
    with pytest.raises(ValueError, match="protocol"):
        protocol_ground_truth([{"easy": [], "hard": [], "junk": []}], "extreme")
    with pytest.raises(ValueError, match="lacks"):
        protocol_ground_truth([{"easy": []}], "easy")
    with pytest.raises(ValueError, match=r"\(Q, N\)"):
        compute_map(np.zeros((2, 3), int), [{"ok": [0]}])
