"""VOC AP (area under the interpolated PR curve) against a plain threshold-by-threshold reference."""

import numpy as np
import pytest

from sslcore.benchmarks.voc_ap import precision_recall_at_thresholds, voc_average_precision, voc_mean_average_precision


def reference_ap(targets, scores):
    """For each distinct threshold t: P(t), R(t) over non-difficult samples with score >= t;
    AP = sum over recall steps of (R_j - R_{j-1}) * max{P_i : R_i >= R_j}."""
    keep = targets != 0
    targets, scores = targets[keep], scores[keep]
    num_pos = np.sum(targets > 0)
    points = []
    for t in sorted(set(scores.tolist()), reverse=True):
        chosen = scores >= t
        tp = np.sum(targets[chosen] > 0)
        points.append((tp / num_pos, tp / np.sum(chosen)))
    ap, previous = 0.0, 0.0
    for recall, _ in points:
        if recall > previous:
            best = max(p for r, p in points if r >= recall)
            ap += (recall - previous) * best
            previous = recall
    return ap


def vissl_style_ap(targets, scores):
    """Sample-by-sample walk down the ranking (VISSL's get_precision_recall), for tie-free scores."""
    keep = targets != 0
    targets, scores = targets[keep] > 0, scores[keep]
    order = np.argsort(-scores)
    tp = np.cumsum(targets[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / targets.sum()
    rec = np.concatenate([[0.0], recall, [1.0]])
    pre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(pre) - 2, -1, -1):
        pre[i] = max(pre[i], pre[i + 1])
    steps = np.flatnonzero(rec[1:] != rec[:-1]) + 1
    return float(sum((rec[i] - rec[i - 1]) * pre[i] for i in steps))


def test_hand_computed_case():
    # ranking: +, -, +, (difficult), -, + ; P at positives 1, 2/3, 3/5; interpolation keeps them
    targets = np.array([1, -1, 1, 0, -1, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.65, 0.6, 0.1])
    expected = (1 + 2 / 3 + 3 / 5) / 3
    assert voc_average_precision(targets, scores) == pytest.approx(expected, abs=1e-12)
    # the difficult sample is ignored whatever its score
    assert voc_average_precision(targets, np.where(targets == 0, 5.0, scores)) == pytest.approx(expected)


def test_interpolation_lifts_precision_dips():
    # +, -, -, +, + : raw precision at recall 1/3 is 1, at 2/3 is 1/2, at 1 is 3/5 -> 2/3 lifted to 3/5
    targets = np.array([1, -1, -1, 1, 1])
    scores = np.array([5.0, 4, 3, 2, 1])
    assert voc_average_precision(targets, scores) == pytest.approx((1 + 3 / 5 + 3 / 5) / 3)


def test_tied_scores_count_as_one_threshold():
    # one positive and one negative tied at the top: the curve's first point is P=1/2, R=1
    assert voc_average_precision(np.array([1, -1]), np.array([1.0, 1.0])) == pytest.approx(0.5)
    assert voc_average_precision(np.array([-1, 1]), np.array([1.0, 1.0])) == pytest.approx(0.5)


@pytest.mark.parametrize("size", [2, 7, 50, 400])
@pytest.mark.parametrize("tie_levels", [None, 3, 12])
def test_matches_reference_on_random_scores(size, tie_levels):
    rng = np.random.default_rng(size * 31 + (tie_levels or 0))
    for _ in range(5):
        targets = rng.choice([1, -1, 0], size=size, p=[0.3, 0.6, 0.1])
        targets[0] = 1
        scores = rng.normal(size=size) if tie_levels is None else rng.integers(0, tie_levels, size).astype(float)
        ours = voc_average_precision(targets, scores)
        assert ours == pytest.approx(reference_ap(targets, scores), abs=1e-12)
        if tie_levels is None:
            assert ours == pytest.approx(vissl_style_ap(targets, scores), abs=1e-12)
        permutation = rng.permutation(size)
        assert voc_average_precision(targets[permutation], scores[permutation]) == pytest.approx(ours, abs=1e-12)


def test_perfect_and_worst_rankings():
    targets = np.array([1, 1, -1, -1, -1])
    assert voc_average_precision(targets, np.array([5.0, 4, 3, 2, 1])) == pytest.approx(1.0)
    assert voc_average_precision(targets, np.array([1.0, 2, 3, 4, 5])) == pytest.approx(2 / 5)  # P 1/4 lifted to 2/5


def test_precision_recall_points():
    precision, recall = precision_recall_at_thresholds(np.array([1, -1, 1]), np.array([3.0, 2.0, 2.0]))
    np.testing.assert_allclose(precision, [1.0, 2 / 3])
    np.testing.assert_allclose(recall, [0.5, 1.0])


def test_mean_average_precision_is_mean_of_columns():
    rng = np.random.default_rng(0)
    targets = rng.choice([1, -1, 0], size=(60, 4))
    targets[0] = 1
    scores = rng.normal(size=(60, 4))
    mean, per_class = voc_mean_average_precision(targets, scores)
    assert per_class.shape == (4,)
    np.testing.assert_allclose(per_class, [reference_ap(targets[:, c], scores[:, c]) for c in range(4)])
    assert mean == pytest.approx(per_class.mean())


def test_errors():
    with pytest.raises(ValueError, match="positive"):
        voc_average_precision(np.array([-1, 0, -1]), np.array([1.0, 2, 3]))
    with pytest.raises(ValueError, match="NaN"):
        voc_average_precision(np.array([1, -1]), np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        voc_average_precision(np.array([1, -1]), np.array([1.0, 2, 3]))
    with pytest.raises(ValueError, match="class 1"):
        voc_mean_average_precision(np.array([[1, -1], [-1, -1]]), np.zeros((2, 2)))
