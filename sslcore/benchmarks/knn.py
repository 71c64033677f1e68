"""Weighted k-nearest-neighbour classification of frozen features (the kNN benchmark).

Protocol (design.md section 9), as in

- [0] Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination"
  (NPID), CVPR 2018, https://arxiv.org/abs/1805.01978, section 3.4: weighted kNN;
- VISSL's nearest-neighbour benchmark (``NEAREST_NEIGHBOR`` config, TOPK=200, SIGMA=0.1);
- [1] Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), 2021,
  https://arxiv.org/abs/2104.14294: the same vote reported at k=20, T=0.07.

Features are L2-normalised so the inner product is the cosine similarity ``s``. Each test sample
takes its k most similar training samples; neighbour j votes for its class with weight
``exp(s_j / T)``; a class's score is the sum of its votes. Search uses faiss ``IndexFlatIP``
(exact), on the GPU when asked and available.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import faiss
import numpy as np

from sslcore.benchmarks.features import PathLike, load_features
from sslcore.benchmarks.metrics import make_record, read_metrics, topk_accuracy, write_metrics
from sslcore.config.schema import Key, declare

log = logging.getLogger(__name__)

declare("NEAREST_NEIGHBOR", {
    "TOPK": Key(200, int, "k: how many nearest training samples vote (NPID and VISSL use 200)"),
    "SIGMA": Key(0.1, float, "temperature T of the vote weight exp(cosine / T); > 0"),
    "L2_NORM_FEATS": Key(True, bool, "L2-normalise features so similarity is cosine (NPID protocol)"),
    "USE_CUDA": Key(False, bool, "search with faiss on the GPU when faiss-gpu and CUDA are present; "
                                 "falls back to CPU with a log line"),
    "OPTIMIZE_MEMORY": Key(False, bool, "memory-map the train features and search them chunk by chunk "
                                        "(for train splits larger than memory); CPU only"),
    "EXTRA_SETTINGS": Key([[20, 0.07]], list, "sslcore key, not in VISSL: more [k, T] pairs reported next "
                                              "to (TOPK, SIGMA); default is DINO's k=20, T=0.07"),
    "FEATURES": {
        "PATH": Key("", str, "directory of precomputed features; empty means extract them first"),
    },
})

DEFAULT_SETTINGS: Tuple[Tuple[int, float], ...] = ((200, 0.1), (20, 0.07))
DEFAULT_CHUNK_SIZE = 8192


def knn_settings_from_config(cfg: Mapping[str, Any]) -> List[Tuple[int, float]]:
    """The (k, T) pairs a config asks for: (TOPK, SIGMA) first, then EXTRA_SETTINGS.

    Args:
        cfg: the run config (dict or DictConfig) with a ``NEAREST_NEIGHBOR`` section.

    Returns:
        Distinct ``(k, T)`` pairs in order.

    Raises:
        ValueError: if an EXTRA_SETTINGS entry is not a ``[k, T]`` pair, k < 1 or T <= 0.
    """
    section = cfg["NEAREST_NEIGHBOR"]
    pairs = [(section["TOPK"], section["SIGMA"])]
    for i, entry in enumerate(section["EXTRA_SETTINGS"]):
        if len(entry) != 2:
            raise ValueError(
                f"config.NEAREST_NEIGHBOR.EXTRA_SETTINGS[{i}] = {list(entry)} must be a [k, T] pair, "
                "e.g. [[20, 0.07]]"
            )
        pairs.append((entry[0], entry[1]))
    settings = _check_settings(pairs, "config.NEAREST_NEIGHBOR")
    return list(dict.fromkeys(settings))


def _check_settings(settings: Sequence[Sequence[Any]], where: str = "settings") -> List[Tuple[int, float]]:
    out = []
    for k, temperature in settings:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"{where}: k must be a positive integer, got {k!r}")
        if not float(temperature) > 0:
            raise ValueError(f"{where}: temperature T must be > 0, got {temperature!r}")
        out.append((int(k), float(temperature)))
    if not out:
        raise ValueError(f"{where}: give at least one (k, T) pair, e.g. [(200, 0.1)]")
    return out


def _prepare(features: np.ndarray, l2_normalize: bool) -> np.ndarray:
    """float32, C-contiguous copy of ``features`` (N, D), optionally with unit-norm rows."""
    out = np.array(features, dtype=np.float32, order="C", copy=True)
    if l2_normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, np.float32(1e-12))
    return out


def _maybe_to_gpu(index: faiss.Index, use_cuda: bool) -> Tuple[faiss.Index, Any]:
    if not use_cuda:
        return index, None
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        resources = faiss.StandardGpuResources()
        log.info("kNN: searching on the GPU with faiss")
        return faiss.index_cpu_to_gpu(resources, 0, index), resources
    log.info("kNN: USE_CUDA is set but faiss has no GPU support here (faiss-cpu or no CUDA); using CPU")
    return index, None


def search_neighbors(
    train_features: np.ndarray,
    test_features: np.ndarray,
    *,
    k: int,
    l2_normalize: bool = True,
    use_cuda: bool = False,
    optimize_memory: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner-product (cosine, when normalised) search with faiss.

    Args:
        train_features: (N, D) float, the searched set; may be a read-only memory map.
        test_features: (M, D) float, the queries.
        k: neighbours per query, 1 <= k <= N.
        l2_normalize: normalise rows of both sets to unit L2 norm first (cosine similarity).
        use_cuda: search on the GPU when faiss-gpu sees one; else CPU with a log line.
        optimize_memory: never hold the whole train set: search it ``chunk_size`` rows at a
            time and merge the partial top-k results (faiss ``ResultHeap``), so a memory-mapped
            train split larger than RAM works (VISSL's OPTIMIZE_MEMORY); CPU only. Otherwise the
            train set is copied into one ``IndexFlatIP`` (normalised chunk by chunk).
        chunk_size: rows per train chunk, and per query chunk.

    Returns:
        ``(similarities, indices)``: float32 (M, k) sorted in decreasing similarity, and int64
        (M, k) row indices into ``train_features``.

    Raises:
        ValueError: if shapes disagree, a set is empty, k is out of range or chunk_size < 1.
    """
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train (N, D) and test (M, D) features must share D, got {train_features.shape} and "
            f"{test_features.shape}; extract both splits from the same layer"
        )
    num_train, dim = train_features.shape
    if num_train == 0 or len(test_features) == 0:
        raise ValueError("kNN needs at least one train and one test sample")
    if not 1 <= k <= num_train:
        raise ValueError(f"k={k} must lie in [1, {num_train}] (the number of train samples); lower TOPK")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    queries = _prepare(test_features, l2_normalize)
    if optimize_memory:
        if use_cuda:
            log.info("kNN: OPTIMIZE_MEMORY searches on CPU; USE_CUDA is ignored")
        heap = faiss.ResultHeap(len(queries), k, keep_max=True)
        for start in range(0, num_train, chunk_size):
            block = _prepare(train_features[start:start + chunk_size], l2_normalize)
            sims, idx = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(np.ascontiguousarray(sims), np.ascontiguousarray(idx + start))
        heap.finalize()
        return heap.D.astype(np.float32), heap.I.astype(np.int64)
    index, _resources = _maybe_to_gpu(faiss.IndexFlatIP(dim), use_cuda)
    for start in range(0, num_train, chunk_size):  # normalised copies one chunk at a time
        index.add(_prepare(train_features[start:start + chunk_size], l2_normalize))
    results = [index.search(queries[s:s + chunk_size], k) for s in range(0, len(queries), chunk_size)]
    sims = np.concatenate([r[0] for r in results]).astype(np.float32)
    return sims, np.concatenate([r[1] for r in results]).astype(np.int64)


def vote(similarities: np.ndarray, neighbor_labels: np.ndarray, *, temperature: float,
         num_classes: int) -> np.ndarray:
    """Class scores from weighted neighbour votes: ``score[i, c] = sum_j [y_j = c] exp(s_ij / T)``.

    When ``|s| / T`` would overflow float64 (only possible without L2 normalisation), each row
    is first scaled by ``exp(-max_j s_ij / T)``; the class ranking is unchanged.

    Args:
        similarities: (M, k) float, similarity of each query to its neighbours.
        neighbor_labels: (M, k) int, the neighbours' classes in [0, C).
        temperature: T > 0.
        num_classes: C.

    Returns:
        float64 (M, C) class scores (0 for classes without a vote).

    Raises:
        ValueError: on shape mismatch, T <= 0 or labels outside [0, C).
    """
    if similarities.shape != neighbor_labels.shape or similarities.ndim != 2:
        raise ValueError(f"similarities {similarities.shape} and labels {neighbor_labels.shape} must be (M, k)")
    if not temperature > 0:
        raise ValueError(f"temperature T must be > 0, got {temperature}")
    if neighbor_labels.size and (neighbor_labels.min() < 0 or neighbor_labels.max() >= num_classes):
        raise ValueError(f"neighbour labels must lie in [0, {num_classes}); set num_classes to the class count")
    logits = similarities.astype(np.float64) / temperature
    if logits.size and np.abs(logits).max() > 700.0:
        logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    rows = np.repeat(np.arange(len(weights)), weights.shape[1])
    flat = rows * num_classes + neighbor_labels.reshape(-1)
    scores = np.bincount(flat, weights=weights.reshape(-1), minlength=len(weights) * num_classes)
    return scores.reshape(len(weights), num_classes)


def _check_labels(labels: np.ndarray, num_rows: int, num_classes: Optional[int], what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != num_rows:
        raise ValueError(
            f"{what} must be (N,) class indices aligned with the features ({num_rows} rows), got "
            f"{labels.shape}; multi-label targets (N, C) need the SVM benchmark instead"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes)):
        raise ValueError(f"{what} must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64, copy=False)


def knn_classify(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    *,
    k: int,
    temperature: float,
    num_classes: int,
    l2_normalize: bool = True,
    use_cuda: bool = False,
    optimize_memory: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """Score each test sample's classes by the NPID weighted kNN vote.

    Args:
        train_features: (N, D) float features of the labelled set.
        train_labels: (N,) int classes in [0, C).
        test_features: (M, D) float features to classify.
        k: neighbours that vote, 1 <= k <= N (VISSL default 200).
        temperature: T of the weight exp(s / T) (VISSL default 0.1).
        num_classes: C.
        l2_normalize: cosine similarity (True, the protocol) or raw inner product.
        use_cuda, optimize_memory, chunk_size: see :func:`search_neighbors`.

    Returns:
        float64 (M, C) class scores; ``argmax`` over axis 1 is the prediction.

    Raises:
        ValueError: mismatched shapes, labels outside [0, C), k out of range, T <= 0.

    Example:
        >>> scores = knn_classify(train_x, train_y, test_x, k=200, temperature=0.1, num_classes=10)
    """
    labels = _check_labels(train_labels, len(train_features), num_classes, "train_labels")
    sims, idx = search_neighbors(train_features, test_features, k=k, l2_normalize=l2_normalize,
                                 use_cuda=use_cuda, optimize_memory=optimize_memory, chunk_size=chunk_size)
    return vote(sims, labels[idx], temperature=temperature, num_classes=num_classes)


def knn_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    k: int,
    temperature: float,
    num_classes: Optional[int] = None,
    **search_options: Any,
) -> Dict[str, float]:
    """Top-1 and top-5 accuracy (percent) of the weighted kNN classifier.

    Args:
        train_features, train_labels, test_features: as in :func:`knn_classify`.
        test_labels: (M,) int true classes.
        k, temperature: the protocol's k and T.
        num_classes: C; inferred as ``max label + 1`` over both splits when None.
        **search_options: ``l2_normalize``, ``use_cuda``, ``optimize_memory``, ``chunk_size``.

    Returns:
        ``{"top1": float, "top5": float}`` in percent; top-5 uses min(5, C) classes.

    Raises:
        ValueError: as :func:`knn_classify`, or if ``test_labels`` do not fit.
    """
    if num_classes is None:
        num_classes = int(max(np.max(train_labels), np.max(test_labels))) + 1
    labels = _check_labels(test_labels, len(test_features), num_classes, "test_labels")
    scores = knn_classify(train_features, train_labels, test_features, k=k, temperature=temperature,
                          num_classes=num_classes, **search_options)
    return topk_accuracy(scores, labels, ks=(1, 5))


def run_knn_benchmark(
    features_dir: PathLike,
    out_dir: PathLike,
    *,
    layer: Union[str, Sequence[str]] = "res5avg",
    settings: Sequence[Sequence[float]] = DEFAULT_SETTINGS,
    l2_normalize: bool = True,
    use_cuda: bool = False,
    optimize_memory: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Dict[str, Any]:
    """Run the kNN benchmark on extracted features and write ``<out_dir>/metrics.json``.

    For each layer, loads the ``train`` and ``test`` splits (see
    :mod:`sslcore.benchmarks.features`), searches the largest k once and scores every (k, T)
    pair from that one search (the top-k of a smaller k is a prefix of it). A k larger than the
    train set is lowered to its size with a warning, and the record says so
    (``params.k_requested``).

    Args:
        features_dir: directory of the features artifact.
        out_dir: where ``metrics.json`` goes; created if missing.
        layer: a layer name or a list of them, e.g. ``["conv1", "res5avg"]``.
        settings: (k, T) pairs; default VISSL's (200, 0.1) and DINO's (20, 0.07).
        l2_normalize, use_cuda, optimize_memory, chunk_size: see :func:`search_neighbors`
            (config keys NEAREST_NEIGHBOR.L2_NORM_FEATS, USE_CUDA, OPTIMIZE_MEMORY).

    Returns:
        The metrics dict as written: ``{"benchmark": "knn", "records": [...], ...}``, one
        top1 and one top5 record (unit "%") per layer and setting, params ``{"k", "T",
        "l2_norm_feats"}``.

    Raises:
        FileNotFoundError: missing features (the message lists the layers present).
        ValueError: bad settings, multi-label targets, or train/test dimensions that differ.
    """
    pairs = _check_settings(settings)
    layers = [layer] if isinstance(layer, str) else list(layer)
    records: List[Dict[str, Any]] = []
    sizes: Dict[str, Dict[str, int]] = {}
    for name in layers:
        records += _run_layer(features_dir, name, pairs, sizes, l2_normalize=l2_normalize,
                              use_cuda=use_cuda, optimize_memory=optimize_memory, chunk_size=chunk_size)
    extra = {
        "protocol": "weighted kNN vote exp(cos/T) (Wu et al. 2018, VISSL nearest-neighbour test)",
        "layers": layers,
        "sizes": sizes,
    }
    path = write_metrics(out_dir, "knn", records, extra)
    log.info("kNN metrics written to %s", path)
    return read_metrics(path)


def _run_layer(features_dir: PathLike, layer: str, pairs: List[Tuple[int, float]],
               sizes: Dict[str, Dict[str, int]], **search_options: Any) -> List[Dict[str, Any]]:
    mmap = "r" if search_options.get("optimize_memory") else None
    train_x, train_y, _ = load_features(features_dir, "train", layer, mmap_mode=mmap)
    test_x, test_y, _ = load_features(features_dir, "test", layer)
    num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    train_y = _check_labels(train_y, len(train_x), num_classes, f"train targets of layer '{layer}'")
    test_y = _check_labels(test_y, len(test_x), num_classes, f"test targets of layer '{layer}'")
    sizes[layer] = {"num_train": len(train_x), "num_test": len(test_x), "num_classes": num_classes,
                    "dim": int(train_x.shape[1])}
    k_max = min(max(k for k, _ in pairs), len(train_x))
    start = time.perf_counter()
    sims, idx = search_neighbors(train_x, test_x, k=k_max, **search_options)
    log.info("kNN %s: searched %d queries in %d train samples (k=%d) in %.1f s", layer, len(test_x),
             len(train_x), k_max, time.perf_counter() - start)
    records = []
    for k, temperature in pairs:
        used = min(k, len(train_x))
        params: Dict[str, Any] = {"k": used, "T": temperature,
                                  "l2_norm_feats": bool(search_options.get("l2_normalize", True))}
        if used != k:
            log.warning("kNN %s: k=%d exceeds the %d train samples; using k=%d", layer, k, len(train_x), used)
            params["k_requested"] = k
        scores = vote(sims[:, :used], train_y[idx[:, :used]], temperature=temperature,
                      num_classes=num_classes)
        accuracy = topk_accuracy(scores, test_y, ks=(1, 5))
        log.info("kNN %s k=%d T=%g: top1 %.2f%% top5 %.2f%%", layer, used, temperature,
                 accuracy["top1"], accuracy["top5"])
        records += [make_record(m, v, unit="%", layer=layer, params=params) for m, v in accuracy.items()]
    return records
