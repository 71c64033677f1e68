"""ClusterFit step 1 as a pipeline stage: extracted features -> k-means pseudo-labels + cluster metrics.

- [0] ClusterFit, Yan, Misra, Gupta, Ghadiyaram & Mahajan 2020, https://arxiv.org/abs/1912.03330
- NMI: Strehl & Ghosh 2002 (arithmetic-mean normalisation, scikit-learn's default); ARI:
  Hubert & Arabie 1985. Both computed with :mod:`sklearn.metrics`.

Reads one layer of a features artifact (:mod:`sslcore.benchmarks.features`), clusters the
``train`` split with the engine's functions (:mod:`sslcore.engine.clusterfit`: L2 normalisation,
faiss k-means, nearest-centroid labels), assigns the ``test`` split to the centroids when its
features exist, and writes

- to ``labels_dir``, as the ``extract_cluster`` engine names them (``<stem> =
  <dataset_name>_<split>_N<K>_faiss``): ``<stem>_lbls.npy`` (int64 (N,), row i = cluster of
  sample i: ClusterFit step 2's label file), ``<stem>_centroids.npy`` (float32 (K, D), train
  only) and ``<stem>_stats.json``;
- to ``metrics_dir``: ``metrics.json`` (benchmark ``"clusterfit"``) with per split ``inertia``,
  ``mean_squared_distance``, ``smallest_cluster``, ``largest_cluster``, ``empty_clusters`` and,
  when the features' targets are class indices, ``NMI`` and ``ARI`` (percent) of the clusters
  against them; the cluster sizes per split go in the extra field ``cluster_sizes``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from sslcore.benchmarks.features import PathLike, feature_paths, list_layers, load_features
from sslcore.benchmarks.metrics import make_record, read_metrics, write_metrics
from sslcore.engine.clusterfit import (
    KMeansResult,
    assign_to_centroids,
    cluster_features,
    cluster_stats,
    labels_by_sample,
    write_cluster_files,
)

log = logging.getLogger(__name__)


def cluster_agreement(clusters: np.ndarray, targets: np.ndarray) -> Optional[Dict[str, float]]:
    """NMI and ARI (percent) of cluster ids against class targets; None when targets are not classes.

    Args:
        clusters: (N,) int cluster id per row.
        targets: (N,) int class per row, or (N, C) multi-hot (then None: no single class).

    Returns:
        ``{"NMI": float, "ARI": float}`` in percent, or None for multi-label or single-class targets.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    targets = np.asarray(targets)
    if targets.ndim != 1 or len(np.unique(targets)) < 2:
        return None
    return {"NMI": 100.0 * float(normalized_mutual_info_score(targets, clusters)),
            "ARI": 100.0 * float(adjusted_rand_score(targets, clusters))}


def _records(result: KMeansResult, targets: np.ndarray, layer: str, params: Dict[str, Any]) -> List[Dict]:
    sizes = result.sizes
    values = {"inertia": (result.inertia, ""), "mean_squared_distance": (result.inertia / len(result.labels), ""),
              "smallest_cluster": (int(sizes.min()), "images"), "largest_cluster": (int(sizes.max()), "images"),
              "empty_clusters": (int((sizes == 0).sum()), "clusters")}
    agreement = cluster_agreement(result.labels, targets)
    for name, value in (agreement or {}).items():
        values[name] = (value, "%")
    return [make_record(name, value, unit=unit, layer=layer, params=params) for name, (value, unit) in values.items()]


def _pick_layer(features_dir: Path, layer: str) -> str:
    present = list_layers(features_dir, "train")
    if layer:
        return layer
    if len(present) != 1:
        raise ValueError(f"give layer: {features_dir} holds train features of layers {present or 'none'}")
    return present[0]


def run_clusterfit_stage(
    features_dir: PathLike,
    labels_dir: PathLike,
    metrics_dir: Optional[PathLike] = None,
    *,
    num_clusters: int,
    n_iter: int = 50,
    layer: str = "",
    seed: int = 0,
    dataset_name: str = "dataset",
) -> Dict[str, Any]:
    """Cluster the train features, label train (and test) samples, write labels and metrics.

    Args:
        features_dir: a features artifact with ``train_<layer>_*.npy`` (and optionally test).
        labels_dir: where ``<stem>_lbls.npy``, ``<stem>_centroids.npy`` and ``<stem>_stats.json`` go.
        metrics_dir: where ``metrics.json`` goes (default ``labels_dir``).
        num_clusters: K of k-means, in [1, N train] (CLUSTERFIT.NUM_CLUSTERS).
        n_iter: k-means iterations (CLUSTERFIT.N_ITER).
        layer: the feature layer (CLUSTERFIT.FEATURES.LAYER_NAME); "" = the only one present.
        seed: faiss's k-means seed.
        dataset_name: first part of the file names (CLUSTERFIT.FEATURES.DATASET_NAME).

    Returns:
        The metrics dict as written (benchmark ``"clusterfit"``), plus ``"labels_files"``:
        split -> path of its labels file.

    Raises:
        FileNotFoundError: no features of ``layer`` in ``features_dir``.
        ValueError: K outside [1, N], n_iter < 1, several layers and none chosen, or feature
            rows that do not cover samples 0..N-1 exactly once (labels are indexed by sample).

    Example:
        >>> run_clusterfit_stage("features", "labels", "metrics", num_clusters=100, layer="res5avg")
    """
    features_dir, labels_dir = Path(features_dir), Path(labels_dir)
    metrics_dir = Path(metrics_dir) if metrics_dir is not None else labels_dir
    layer = _pick_layer(features_dir, layer)
    feats, targets, inds = load_features(features_dir, "train", layer)
    start = time.perf_counter()
    result = cluster_features(feats, num_clusters, n_iter=n_iter, seed=seed)
    seconds = time.perf_counter() - start
    params = {"num_clusters": int(num_clusters), "n_iter": int(n_iter), "layer": layer, "seed": int(seed),
              "backend": "faiss", "features_l2_normalized": True}
    context = {"layer": layer, "features_dir": str(features_dir), "backend": "faiss", "n_iter": int(n_iter),
               "seed": int(seed), "features_l2_normalized": True}
    splits = {"train": (result, targets, inds)}
    if feature_paths(features_dir, "test", layer)["features"].is_file():
        t_feats, t_targets, t_inds = load_features(features_dir, "test", layer)
        t_labels, t_dist = assign_to_centroids(t_feats, result.centroids)
        splits["test"] = (KMeansResult(t_labels, t_dist, result.centroids, []), t_targets, t_inds)
    records, sizes, files = [], {}, {}
    for split, (res, split_targets, split_inds) in splits.items():
        stem = f"{dataset_name}_{split}_N{int(num_clusters)}_faiss"
        files[split] = str(labels_dir / f"{stem}_lbls.npy")
        write_cluster_files(labels_dir, Path(files[split]),
                            labels_by_sample(split_inds, res.labels, f"{split} features"),
                            result.centroids if split == "train" else None,
                            cluster_stats(res, **context, split=split))
        records += _records(res, split_targets, layer, {**params, "split": split})
        sizes[split] = res.sizes.tolist()
    extra = {"protocol": "ClusterFit step 1 (Yan et al. 2020): L2-normalised features, faiss k-means; "
                         "NMI/ARI against the dataset labels",
             "sizes": {s: len(v[0].labels) for s, v in splits.items()}, "dim": int(feats.shape[1]),
             "cluster_sizes": sizes, "labels_files": {s: Path(f).name for s, f in files.items()},
             "timings": {"kmeans_s": seconds}}
    metrics = read_metrics(write_metrics(metrics_dir, "clusterfit", records, extra=extra))
    log.info("clusterfit: %d %s features into %d clusters in %.1f s", len(feats), layer, num_clusters, seconds)
    return {**metrics, "labels_files": files}
