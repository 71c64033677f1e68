"""Low-shot linear SVM benchmark: SVMs trained on k positives per class, 5 random samples per k.

Protocol (design.md section 9), as in

- [0] Goyal et al., "Scaling and Benchmarking Self-Supervised Visual Representation Learning",
  ICCV 2019, https://arxiv.org/abs/1905.01235, section 6.2 (low-shot VOC07 and Places205);
- VISSL's ``SVMLowShotTrainer`` (``vissl/utils/svm_utils/svm_low_shot_trainer.py``) and its
  sampling scripts (``extra_scripts/create_low_shot_samples.py``).

For each k in :data:`LOW_SHOT_K` and each of ``num_samples`` independent samples, the train
split is subsampled and one SVM per class and cost is trained on it; every SVM is tested on the
*whole* test split. What each class's SVM trains on, as in VISSL:

- multi-label (N, C) VOC flags (VISSL's "voc" mode): per class c independently, k rows with
  flag 1 (positives) and ``(C - 1) * k`` rows with flag -1 (negatives); difficult rows (0) are
  never drawn, and are left out of the test AP;
- single-label (N,) class ids (VISSL's "places" mode): k rows of every class are drawn once per
  sample; class c's SVM trains on all ``C * k`` of them, its own k as positives and the other
  ``(C - 1) * k`` as negatives.

SVMs are the VOC07 protocol's (:func:`sslcore.benchmarks.svm.make_svm`) on features normalised
``x / (||x|| + 1e-5)``, with no cross-validation (too few samples). For every (k, sample, cost)
the test mAP over classes is computed; per k, the cost with the best mean test mAP over the
samples is chosen (VISSL's ``aggregate_stats``: the cost is chosen on the test split, so the
numbers are an upper bound over costs), and mean / std (population, ddof 0) / min / max over the
samples at that cost are reported, in percent.

Sampling is seeded per (seed, sample, k) with ``numpy.random.default_rng``, so a sample does not
depend on which other k values are run; the drawn rows are saved in ``low_shot_samples.json``.
A class with fewer than k positives (or fewer than ``(C - 1) * k`` negatives) uses all it has
(VISSL's VOC script would raise, its Places script skips the k): the record of that k lists the
classes in ``params.classes_short``, and ``metrics.json``'s ``shortfalls`` gives the counts.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from joblib import Parallel, delayed

from sslcore.benchmarks.features import PathLike, load_features
from sslcore.benchmarks.metrics import make_record, read_metrics, write_metrics
from sslcore.benchmarks.svm import (
    SVM_PARAMS,
    VOC07_COSTS,
    check_costs,
    binary_targets,
    fit_svm,
    normalize_features,
)
from sslcore.benchmarks.voc_ap import voc_average_precision

log = logging.getLogger(__name__)

LOW_SHOT_K: Tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 96)
NUM_SAMPLES = 5
STATS = ("mean", "std", "min", "max")
SAMPLES_FILENAME = "low_shot_samples.json"
LOW_SHOT_AP_FILENAME = "low_shot_ap.json"

Sample = List[Dict[str, List[int]]]  # per class: {"positives": rows, "negatives": rows}


def _draw(rng: np.random.Generator, rows: np.ndarray, count: int) -> np.ndarray:
    if count >= len(rows):
        return np.sort(rows)
    return np.sort(rng.choice(rows, size=count, replace=False))


def sample_low_shot(flags: np.ndarray, k: int, rng: np.random.Generator, *, single_label: bool) -> Sample:
    """Draw one low-shot training set per class (see the module docstring for the two modes).

    Args:
        flags: (N, C) int8 VOC flags of the train split (1 present, -1 absent, 0 difficult);
            for single-label data, the one-vs-rest flags of :func:`binary_targets`.
        k: positives per class, >= 1.
        rng: the random generator of this (sample, k).
        single_label: draw one shared set of k rows per class (Places mode) instead of k
            positives and ``(C - 1) * k`` negatives per class (VOC mode).

    Returns:
        C dicts ``{"positives": rows, "negatives": rows}``: sorted row indices into the train
        split. A list is shorter than asked when the class has too few rows.

    Raises:
        ValueError: if k < 1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 positives per class, got {k}")
    num_classes = flags.shape[1]
    if single_label:
        drawn = [_draw(rng, np.flatnonzero(flags[:, c] == 1), k) for c in range(num_classes)]
        shared = np.sort(np.concatenate(drawn))
        return [{"positives": drawn[c].tolist(),
                 "negatives": shared[flags[shared, c] == -1].tolist()} for c in range(num_classes)]
    return [{"positives": _draw(rng, np.flatnonzero(flags[:, c] == 1), k).tolist(),
             "negatives": _draw(rng, np.flatnonzero(flags[:, c] == -1), (num_classes - 1) * k).tolist()}
            for c in range(num_classes)]


def draw_low_shot_samples(flags: np.ndarray, k_values: Sequence[int], num_samples: int, seed: int, *,
                          single_label: bool) -> Dict[int, List[Sample]]:
    """All samples of a run: ``{k: [sample 0, ..., sample S-1]}``, each seeded by (seed, s, k).

    Args:
        flags: (N, C) VOC flags of the train split.
        k_values: the k values, each >= 1.
        num_samples: S >= 1 independent samples per k.
        seed: the run's seed (int >= 0).
        single_label: see :func:`sample_low_shot`.

    Returns:
        ``{k: [S samples]}`` as returned by :func:`sample_low_shot`.

    Raises:
        ValueError: if num_samples < 1, seed < 0 or a k < 1.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return {int(k): [sample_low_shot(flags, int(k), np.random.default_rng([seed, s, int(k)]),
                                     single_label=single_label) for s in range(num_samples)]
            for k in k_values}


def shortfalls(samples: Dict[int, List[Sample]], num_classes: int) -> List[Dict[str, Any]]:
    """Classes whose draws came out short: one entry per (k, class, kind), from the first sample.

    Returns:
        ``[{"k", "class", "kind": "positives"|"negatives", "wanted", "available"}]``; shortages do
        not vary across samples (they depend on counts only).
    """
    out = []
    for k, per_sample in samples.items():
        for c, drawn in enumerate(per_sample[0]):
            wanted = {"positives": k, "negatives": (num_classes - 1) * k}
            for kind, count in wanted.items():
                if len(drawn[kind]) < count:
                    out.append({"k": k, "class": c, "kind": kind, "wanted": count,
                                "available": len(drawn[kind])})
    return out


def train_test_sample(train_x: np.ndarray, flags: np.ndarray, test_x: np.ndarray, test_flags: np.ndarray,
                      sample: Sample, costs: Sequence[float]) -> np.ndarray:
    """Train one SVM per (class, cost) on a sample's rows and test each on the whole test split.

    Args:
        train_x: (N, D) float64 normalised train features.
        flags: (N, C) train VOC flags.
        test_x: (M, D) float64 normalised test features.
        test_flags: (M, C) test VOC flags (difficult ignored in AP).
        sample: per class ``{"positives", "negatives"}`` train rows.
        costs: K costs.

    Returns:
        float64 (C, K) test AP in [0, 1].

    Raises:
        ValueError: if a class has no positive or no negative in the sample, or no test positive.
    """
    ap = np.zeros((len(sample), len(costs)))
    for c, drawn in enumerate(sample):
        if not drawn["positives"] or not drawn["negatives"]:
            raise ValueError(
                f"class {c} has {len(drawn['positives'])} positives and {len(drawn['negatives'])} "
                "negatives in the train split; the low-shot SVM needs at least one of each"
            )
        rows = np.array(drawn["positives"] + drawn["negatives"])
        labels = np.concatenate([np.ones(len(drawn["positives"]), np.int64),
                                 -np.ones(len(drawn["negatives"]), np.int64)])
        for j, cost in enumerate(costs):
            model = fit_svm(cost, train_x[rows], labels)
            try:
                ap[c, j] = voc_average_precision(test_flags[:, c], model.decision_function(test_x))
            except ValueError as exc:
                raise ValueError(f"test AP of class {c}: {exc}") from exc
    return ap


def aggregate_low_shot(map_grid: np.ndarray) -> Tuple[int, Dict[str, float]]:
    """VISSL's aggregation of one k: pick the cost of best mean mAP, stats over samples there.

    Args:
        map_grid: (S, K) test mAP in percent per (sample, cost).

    Returns:
        ``(cost_index, {"mean", "std", "min", "max"})``; std is the population std (ddof 0).
    """
    best = int(np.argmax(map_grid.mean(axis=0)))
    column = map_grid[:, best]
    return best, {"mean": float(column.mean()), "std": float(column.std()),
                  "min": float(column.min()), "max": float(column.max())}


def _check_k_values(k_values: Sequence[int]) -> List[int]:
    values = [int(k) for k in k_values]
    if not values or any(k < 1 or k != float(kv) for k, kv in zip(values, k_values)):
        raise ValueError(f"k_values must be positive integers, e.g. [1, 8, 96], got {list(k_values)}")
    return list(dict.fromkeys(values))


def run_low_shot_benchmark(
    features_dir: PathLike,
    out_dir: PathLike,
    *,
    layer: str = "res5avg",
    k_values: Sequence[int] = LOW_SHOT_K,
    num_samples: int = NUM_SAMPLES,
    seed: int = 0,
    costs: Sequence[float] = VOC07_COSTS,
    n_jobs: Optional[int] = None,
) -> Dict[str, Any]:
    """Run the low-shot SVM benchmark on extracted features; write its results to ``out_dir``.

    Files written: ``metrics.json`` (per k, four ``mAP`` records, params ``{"k", "num_samples",
    "stat", "cost", ...}``, unit "%"), ``low_shot_samples.json`` (``{"seed", "single_label",
    "samples": {"<k>": [per sample: per class {"positives": rows, "negatives": rows}]}}``, rows
    of ``train_<layer>_*.npy``) and ``low_shot_ap.json`` (``{"costs", "k_values", "map":
    {"<k>": [S][K] %}, "chosen_cost": {"<k>": cost}, "per_class_ap": {"<k>": [S][C] %}}``).

    Args:
        features_dir: directory of the features artifact (train and test splits).
        out_dir: the output directory; created if missing.
        layer: the feature layer.
        k_values: positives per class (default VISSL's 1..96).
        num_samples: independent samples per k (5).
        seed: seed of the sampling.
        costs: SVM costs tried (default the VOC07 list).
        n_jobs: joblib workers over (k, sample) pairs (None = 1).

    Returns:
        The metrics dict as written: ``{"benchmark": "low_shot", "records": [...], ...}``.

    Raises:
        FileNotFoundError: missing features.
        ValueError: bad k values, costs, num_samples or targets; a class without positives.
    """
    k_values, costs = _check_k_values(k_values), check_costs(costs)
    train_x, train_y, _ = load_features(features_dir, "train", layer)
    test_x, test_y, _ = load_features(features_dir, "test", layer)
    single_label = train_y.ndim == 1
    num_classes = int(max(train_y.max(), test_y.max())) + 1 if single_label else train_y.shape[1]
    flags = binary_targets(train_y, num_classes if single_label else None)
    test_flags = binary_targets(test_y, num_classes if single_label else None)
    samples = draw_low_shot_samples(flags, k_values, num_samples, seed, single_label=single_label)
    short = shortfalls(samples, num_classes)
    for entry in short:
        log.warning("low-shot k=%d: class %d has %d %s, fewer than %d; using all of them", entry["k"],
                    entry["class"], entry["available"], entry["kind"], entry["wanted"])
    start = time.perf_counter()
    x, tx = normalize_features(train_x), normalize_features(test_x)
    pairs = [(k, s) for k in k_values for s in range(num_samples)]
    grids = Parallel(n_jobs=n_jobs)(delayed(train_test_sample)(x, flags, tx, test_flags, samples[k][s], costs)
                                    for k, s in pairs)
    ap = {pair: 100.0 * grid for pair, grid in zip(pairs, grids)}  # (C, K) in %
    log.info("low-shot %s: %d (k, sample) pairs x %d classes x %d costs in %.1f s", layer, len(pairs),
             num_classes, len(costs), time.perf_counter() - start)
    records, details = _summarise(ap, k_values, num_samples, costs, layer, short, seed)
    out = Path(out_dir)
    path = write_metrics(out, "low_shot", records, {
        "protocol": "low-shot linear SVM (Goyal et al. 2019, VISSL SVMLowShotTrainer)",
        "layers": [layer], "mode": "places (single-label)" if single_label else "voc (multi-label)",
        "sizes": {layer: {"num_train": len(train_x), "num_test": len(test_x), "num_classes": num_classes,
                          "dim": int(train_x.shape[1])}},
        "shortfalls": short})
    (out / SAMPLES_FILENAME).write_text(json.dumps(
        {"seed": seed, "layer": layer, "single_label": single_label, "num_samples": num_samples,
         "rows_of": f"train_{layer}_*.npy", "samples": {str(k): v for k, v in samples.items()}}) + "\n")
    (out / LOW_SHOT_AP_FILENAME).write_text(json.dumps(details, indent=1) + "\n")
    return read_metrics(path)


def _summarise(ap: Dict[Tuple[int, int], np.ndarray], k_values: List[int], num_samples: int,
               costs: List[float], layer: str, short: List[Dict[str, Any]],
               seed: int) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    records: List[Dict[str, Any]] = []
    details: Dict[str, Any] = {"layer": layer, "costs": costs, "k_values": k_values, "map": {},
                               "chosen_cost": {}, "per_class_ap": {}}
    for k in k_values:
        grid = np.stack([ap[(k, s)].mean(axis=0) for s in range(num_samples)])  # (S, K)
        best, stats = aggregate_low_shot(grid)
        details["map"][str(k)] = grid.tolist()
        details["chosen_cost"][str(k)] = costs[best]
        details["per_class_ap"][str(k)] = [ap[(k, s)][:, best].tolist() for s in range(num_samples)]
        params: Dict[str, Any] = {"k": k, "num_samples": num_samples, "cost": costs[best], "costs": costs,
                                  "seed": seed, "cost_selection": "best mean test mAP over samples (VISSL)",
                                  "class_weight": {"1": 2, "-1": 1}, **SVM_PARAMS}
        classes_short = sorted({e["class"] for e in short if e["k"] == k})
        if classes_short:
            params["classes_short"] = classes_short
        for stat in STATS:
            records.append(make_record("mAP", stats[stat], unit="%", layer=layer, params={**params, "stat": stat}))
        log.info("low-shot %s k=%d: mAP %.2f +- %.2f (min %.2f, max %.2f) at C=%g", layer, k, stats["mean"],
                 stats["std"], stats["min"], stats["max"], costs[best])
    return records, details
