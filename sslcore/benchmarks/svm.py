"""VOC07 linear SVM benchmark of frozen features: one-vs-rest SVMs, cost per class by 3-fold CV.

Protocol (design.md section 9), as in

- [0] Goyal et al., "Scaling and Benchmarking Self-Supervised Visual Representation Learning",
  ICCV 2019, https://arxiv.org/abs/1905.01235, section 5 (the VOC07 linear SVM transfer task);
- VISSL's ``SVMTrainer`` (``vissl/utils/svm_utils/svm_trainer.py``) and ``SVM`` config.

Steps, per layer:

1. Features are cast to float64 and L2-normalised as ``x / (||x|| + 1e-5)``.
2. Per class c, a binary problem: target ``1`` positive, ``-1`` negative, ``0`` (VOC
   "difficult") left out. Single-label (N,) class ids become one-vs-rest (class c vs the rest).
3. For every cost in :data:`VOC07_COSTS`, a ``LinearSVC`` (squared hinge, L2, dual, max_iter 2000,
   tol 1e-4, class_weight {1: 2, -1: 1}, fit_intercept with intercept_scaling 1, sklearn's
   defaults that VISSL keeps) is scored by 3-fold cross-validation exactly as VISSL's
   ``cross_val_score(clf, X, y, cv=3, scoring="average_precision")``: folds from
   ``StratifiedKFold(n_splits=3)`` without shuffling (consecutive rows, class ratio kept), each
   fold scored by sklearn's ``average_precision_score`` on ``decision_function`` (the
   non-interpolated AP, not the VOC AP), the three folds averaged.
4. The cost with the highest mean CV AP is chosen (the first one on ties, ``np.argmax``); the
   SVM is refit on the whole train split with it. (VISSL refits for every cost and keeps the
   chosen one; the chosen model is the same.)
5. Test AP per class is VOC's interpolated AP (:mod:`sslcore.benchmarks.voc_ap`) of
   ``decision_function`` on the test split, difficult samples left out; mAP is their mean.

Differences from VISSL, on purpose: VISSL's full-set trainer turns the difficult flag into a
negative for training (its ``-1`` "ignore" label survives the 0 -> -1 remapping); here difficult
samples are left out of training and CV as well as test, as its low-shot trainer does. liblinear
shuffles coordinates with a seed: ``random_state=0`` here (VISSL leaves it unset, so its runs
vary slightly). Classes are trained in parallel with joblib (VISSL uses one thread per class).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from sslcore.benchmarks.features import PathLike, load_features
from sslcore.benchmarks.metrics import make_record, read_metrics, write_metrics
from sslcore.benchmarks.voc_ap import voc_average_precision

log = logging.getLogger(__name__)

VOC07_COSTS: Tuple[float, ...] = (0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 50.0, 100.0, 1000.0)
CV_FOLDS = 3
CLASS_WEIGHT = {1: 2, -1: 1}
SVM_PARAMS: Dict[str, Any] = {"loss": "squared_hinge", "penalty": "l2", "dual": True, "max_iter": 2000,
                              "tol": 1e-4, "fit_intercept": True, "intercept_scaling": 1.0}
RANDOM_STATE = 0
CV_AP_FILENAME = "cv_ap.json"
PER_CLASS_AP_FILENAME = "per_class_ap.json"


def normalize_features(features: np.ndarray) -> np.ndarray:
    """VISSL's SVM feature normalisation ``x / (||x||_2 + 1e-5)`` per row, in float64.

    Args:
        features: (N, D) float.

    Returns:
        float64 (N, D).
    """
    features = np.asarray(features, dtype=np.float64)
    return features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-5)


def binary_targets(targets: np.ndarray, num_classes: Optional[int] = None) -> np.ndarray:
    """Per-class VOC flags (1 present, -1 absent, 0 difficult) from either kind of target.

    Args:
        targets: (N,) int class ids in [0, C) (one-vs-rest: 1 for the class, -1 for the rest),
            or (N, C) int VOC flags in {1, 0, -1}.
        num_classes: C for (N,) targets; default ``max + 1``.

    Returns:
        int8 (N, C) in {1, 0, -1}.

    Raises:
        ValueError: values outside the conventions, or (N, C) targets holding only 0 and 1
            (0/1 multi-hot: in VOC's convention 0 means difficult, so every absent label would
            be ignored).
    """
    targets = np.asarray(targets)
    if targets.ndim == 1:
        if targets.size and targets.min() < 0:
            raise ValueError(f"class ids must be >= 0, got {targets.min()}")
        count = int(targets.max()) + 1 if num_classes is None else int(num_classes)
        if targets.size and targets.max() >= count:
            raise ValueError(f"class ids must lie in [0, {count}), got {targets.max()}")
        return np.where(targets[:, None] == np.arange(count)[None, :], 1, -1).astype(np.int8)
    if targets.ndim != 2:
        raise ValueError(f"targets must be (N,) class ids or (N, C) VOC flags, got shape {targets.shape}")
    values = set(np.unique(targets).tolist())
    if not values <= {-1, 0, 1}:
        raise ValueError(
            f"(N, C) targets must hold VOC flags 1 present, -1 absent, 0 difficult; got values "
            f"{sorted(values)}"
        )
    if -1 not in values and targets.size:
        raise ValueError(
            "(N, C) targets hold only 0 and 1, which reads as 'no sample is ever absent' (0 = "
            "difficult in VOC's convention); convert 0/1 multi-hot with np.where(t == 1, 1, -1)"
        )
    return targets.astype(np.int8)


def make_svm(cost: float) -> LinearSVC:
    """The VOC07 protocol's ``LinearSVC`` at cost ``C = cost`` (see the module docstring)."""
    return LinearSVC(C=float(cost), class_weight=CLASS_WEIGHT, random_state=RANDOM_STATE, **SVM_PARAMS)


def fit_svm(cost: float, features: np.ndarray, labels: np.ndarray) -> LinearSVC:
    """Fit :func:`make_svm` (``cost``) on (N, D) features and (N,) {1, -1} labels.

    liblinear's "failed to converge" warning is silenced (large costs routinely stop at
    max_iter=2000 in this protocol, as in VISSL); such fits are logged at DEBUG level.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = make_svm(cost).fit(features, labels)
    if np.max(clf.n_iter_) >= SVM_PARAMS["max_iter"]:
        log.debug("LinearSVC C=%g stopped at max_iter=%d", cost, SVM_PARAMS["max_iter"])
    return clf


def check_costs(costs: Sequence[float]) -> List[float]:
    """``costs`` as floats; raises ValueError unless it is a non-empty list of positive numbers."""
    values = [float(c) for c in costs]
    if not values or any(not c > 0 for c in values):
        raise ValueError(f"costs must be a non-empty list of positive numbers, got {list(costs)}")
    return values


def cross_validated_ap(features: np.ndarray, labels: np.ndarray, costs: Sequence[float],
                       folds: int = CV_FOLDS) -> np.ndarray:
    """Mean ``folds``-fold CV average precision of one class's SVM, for each cost.

    Args:
        features: (N, D) float64, normalised.
        labels: (N,) int in {1, -1} (difficult samples already removed).
        costs: K costs.
        folds: number of stratified folds (VISSL: 3).

    Returns:
        float64 (K,) mean AP in [0, 1] (sklearn ``average_precision_score`` per fold).

    Raises:
        ValueError: if either label has fewer than ``folds`` samples.
    """
    counts = {label: int(np.sum(labels == label)) for label in (1, -1)}
    if min(counts.values()) < folds:
        raise ValueError(
            f"{folds}-fold CV needs at least {folds} positives and negatives per class, got "
            f"{counts[1]} positives and {counts[-1]} negatives; add train samples of the class"
        )
    splits = list(StratifiedKFold(n_splits=folds).split(features, labels))
    out = np.zeros(len(costs))
    for i, cost in enumerate(costs):
        scores = []
        for train_rows, val_rows in splits:
            clf = fit_svm(cost, features[train_rows], labels[train_rows])
            scores.append(average_precision_score(labels[val_rows], clf.decision_function(features[val_rows]),
                                                  pos_label=1))
        out[i] = np.mean(scores)
    return out


def _train_class(features: np.ndarray, flags: np.ndarray, costs: List[float],
                 folds: int) -> Tuple[np.ndarray, int, LinearSVC]:
    keep = flags != 0
    x, y = features[keep], flags[keep].astype(np.int64)
    cv_ap = cross_validated_ap(x, y, costs, folds)
    best = int(np.argmax(cv_ap))
    return cv_ap, best, fit_svm(costs[best], x, y)


def train_svm_per_class(
    features: np.ndarray,
    targets: np.ndarray,
    *,
    costs: Sequence[float] = VOC07_COSTS,
    cv_folds: int = CV_FOLDS,
    n_jobs: Optional[int] = None,
    normalize: bool = True,
) -> Dict[str, Any]:
    """Train the VOC07 protocol's one-vs-rest SVMs: CV AP per (class, cost), refit at the best cost.

    Args:
        features: (N, D) float train features.
        targets: (N,) int class ids or (N, C) int VOC flags (see :func:`binary_targets`).
        costs: K SVM costs C to cross-validate (default VISSL's 11).
        cv_folds: stratified folds (3).
        n_jobs: joblib workers over classes; None = 1, -1 = all cores.
        normalize: apply :func:`normalize_features` first (the protocol does).

    Returns:
        ``{"cv_ap": float64 (C, K) mean CV AP in [0, 1], "best_cost_index": int (C,),
        "chosen_cost": float (C,), "models": C fitted LinearSVC}``.

    Raises:
        ValueError: bad costs or targets, or a class with fewer than ``cv_folds`` positives or
            negatives.

    Example:
        >>> result = train_svm_per_class(train_x, train_y, n_jobs=2)
        >>> result["chosen_cost"]
    """
    costs = check_costs(costs)
    flags = binary_targets(targets)
    x = normalize_features(features) if normalize else np.asarray(features, dtype=np.float64)
    if len(x) != len(flags):
        raise ValueError(f"features have {len(x)} rows but targets {len(flags)}; rows must align")
    jobs = (delayed(_train_class)(x, flags[:, c], costs, cv_folds) for c in range(flags.shape[1]))
    try:
        results = Parallel(n_jobs=n_jobs)(jobs)
    except ValueError as exc:
        raise ValueError(f"SVM training: {exc}") from exc
    best = np.array([r[1] for r in results], dtype=np.int64)
    return {"cv_ap": np.stack([r[0] for r in results]), "best_cost_index": best,
            "chosen_cost": np.array([costs[i] for i in best]), "models": [r[2] for r in results]}


def evaluate_svm_per_class(models: Sequence[LinearSVC], features: np.ndarray, targets: np.ndarray, *,
                       normalize: bool = True) -> np.ndarray:
    """VOC AP of each class's SVM on held-out features (difficult samples left out).

    Args:
        models: C fitted SVMs, one per class.
        features: (M, D) float test features.
        targets: (M,) class ids or (M, C) VOC flags.
        normalize: apply :func:`normalize_features` first.

    Returns:
        float64 (C,) AP in [0, 1].

    Raises:
        ValueError: class count mismatch, or a class without test positives.
    """
    flags = binary_targets(targets, num_classes=len(models) if np.ndim(targets) == 1 else None)
    if flags.shape[1] != len(models):
        raise ValueError(f"{len(models)} SVMs but test targets have {flags.shape[1]} classes")
    x = normalize_features(features) if normalize else np.asarray(features, dtype=np.float64)
    ap = np.zeros(len(models))
    for c, model in enumerate(models):
        try:
            ap[c] = voc_average_precision(flags[:, c], model.decision_function(x))
        except ValueError as exc:
            raise ValueError(f"test AP of class {c}: {exc}") from exc
    return ap


def run_svm_benchmark(
    features_dir: PathLike,
    out_dir: PathLike,
    *,
    layers: Union[str, Sequence[str]] = ("res5avg",),
    costs: Sequence[float] = VOC07_COSTS,
    n_jobs: Optional[int] = None,
) -> Dict[str, Any]:
    """Run the VOC07 SVM benchmark on extracted features and write its results to ``out_dir``.

    Files written: ``metrics.json`` (one ``mAP`` record per layer, unit "%", params holding the
    protocol), ``cv_ap.json`` (``{layer: {"costs": [K], "cv_ap": [C][K] in %, "chosen_cost":
    [C]}}``) and ``per_class_ap.json`` (``{layer: {"classes": [C], "ap": [C] in %,
    "chosen_cost": [C]}}``).

    Args:
        features_dir: directory of the features artifact (train and test splits).
        out_dir: the output directory; created if missing.
        layers: a layer name or a list of them, e.g. ``["res4", "res5avg"]``.
        costs: SVM costs to cross-validate (default VISSL's 11).
        n_jobs: joblib workers over classes (None = 1).

    Returns:
        The metrics dict as written: ``{"benchmark": "svm", "records": [...], ...}``.

    Raises:
        FileNotFoundError: missing features (the message lists the layers present).
        ValueError: bad targets or costs, train/test class counts that differ, or a class with
            too few samples for 3-fold CV or no test positive.
    """
    costs = check_costs(costs)
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ValueError("layers is empty; name at least one, e.g. layers=['res5avg']")
    records, cv_out, ap_out, sizes = [], {}, {}, {}
    params = {"costs": costs, "cv_folds": CV_FOLDS, "class_weight": {str(k): v for k, v in CLASS_WEIGHT.items()},
              **SVM_PARAMS, "normalize": "x / (||x|| + 1e-5)", "cv_scoring": "sklearn average_precision",
              "test_ap": "VOC interpolated AP, difficult ignored", "random_state": RANDOM_STATE}
    for layer in layers:
        result, ap, sizes[layer] = _run_layer(features_dir, layer, costs, n_jobs)
        chosen = result["chosen_cost"].tolist()
        cv_out[layer] = {"costs": costs, "cv_ap": (100.0 * result["cv_ap"]).tolist(), "chosen_cost": chosen}
        ap_out[layer] = {"classes": [str(c) for c in range(len(ap))], "ap": (100.0 * ap).tolist(),
                         "chosen_cost": chosen}
        records.append(make_record("mAP", 100.0 * float(ap.mean()), unit="%", layer=layer, params=params))
    out = Path(out_dir)
    path = write_metrics(out, "svm", records, {"protocol": "VOC07 linear SVM (Goyal et al. 2019, VISSL)",
                                               "layers": layers, "sizes": sizes})
    for name, payload in ((CV_AP_FILENAME, cv_out), (PER_CLASS_AP_FILENAME, ap_out)):
        (out / name).write_text(json.dumps(payload, indent=2) + "\n")
    log.info("SVM metrics written to %s", path)
    return read_metrics(path)


def _run_layer(features_dir: PathLike, layer: str, costs: List[float],
               n_jobs: Optional[int]) -> Tuple[Dict[str, Any], np.ndarray, Dict[str, int]]:
    train_x, train_y, _ = load_features(features_dir, "train", layer)
    test_x, test_y, _ = load_features(features_dir, "test", layer)
    if train_y.ndim != test_y.ndim:
        raise ValueError(f"layer '{layer}': train targets are {train_y.shape} but test targets {test_y.shape}")
    num_classes = (int(max(train_y.max(), test_y.max())) + 1 if train_y.ndim == 1 else train_y.shape[1])
    if train_y.ndim == 1:
        train_y = binary_targets(train_y, num_classes)
    start = time.perf_counter()
    result = train_svm_per_class(train_x, train_y, costs=costs, n_jobs=n_jobs)
    ap = evaluate_svm_per_class(result["models"], test_x, test_y)
    log.info("SVM %s: %d classes, %d train / %d test, mAP %.2f%% in %.1f s", layer, num_classes,
             len(train_x), len(test_x), 100 * ap.mean(), time.perf_counter() - start)
    sizes = {"num_train": len(train_x), "num_test": len(test_x), "num_classes": num_classes,
             "dim": int(train_x.shape[1])}
    return result, ap, sizes
