"""ClusterFit step 1 (``engine_name=extract_cluster``): features -> k-means -> pseudo-labels.

- [0] ClusterFit, Yan, Misra, Gupta, Ghadiyaram & Mahajan 2020, https://arxiv.org/abs/1912.03330

ClusterFit trains a network from scratch (step 2) on labels obtained by clustering the features
of a pretrained one (step 1). Step 1, as VISSL runs it:

1. extract the features of ``CLUSTERFIT.FEATURES.LAYER_NAME`` on ``DATA_PARTITION`` with the
   ``extract_features`` engine (``FEATURES.EXTRACT: true``), or read them from ``FEATURES.PATH``;
2. L2-normalise each row, ``x / (||x|| + 1e-5)``;
3. k-means with faiss: ``NUM_CLUSTERS`` centroids, ``N_ITER`` iterations, seeded by SEED_VALUE;
4. label each sample with its nearest centroid, and the ``TEST_PARTITION`` split too when its
   features exist.

Files written to ``CLUSTERFIT.OUTPUT_DIR`` (default CHECKPOINT.DIR), named as VISSL names them
with ``<stem> = <DATASET_NAME>_<split>_N<NUM_CLUSTERS>_faiss``::

    <stem>_lbls.npy        int64 (N,)   cluster id of sample i at row i (step 2's LABEL_PATHS)
    <stem>_centroids.npy   float32 (K, D) centroids in the normalised feature space
    <stem>_stats.json      cluster sizes, inertia (sum of squared distances), k-means objective

Step 2 is a supervised run: ``LABEL_SOURCES: [disk_filelist]``, ``LABEL_PATHS: [<stem>_lbls.npy]``,
``LOSS.name: cross_entropy_multiple_output_single_target`` and a last head NUM_CLUSTERS wide.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from omegaconf import DictConfig

from sslcore.config.schema import Key, declare
from sslcore.engine.distributed import barrier, is_primary

log = logging.getLogger(__name__)

_SPLITS = ("TRAIN", "TEST")

declare("CLUSTERFIT", {
    "OUTPUT_DIR": Key("", str, "where labels, centroids and statistics go ('' = CHECKPOINT.DIR)"),
    "NUM_CLUSTERS": Key(16000, int, "K of k-means: the number of pseudo-classes (VISSL: 16000 "
                        "for ImageNet-1k)"),
    "N_ITER": Key(50, int, "k-means iterations"),
    "CLUSTER_BACKEND": Key("faiss", str, "k-means implementation", choices=("faiss",)),
    "FEATURES": {
        "EXTRACT": Key(False, bool, "run feature extraction with this config first; false reads "
                       "existing features from FEATURES.PATH"),
        "PATH": Key("", str, "with EXTRACT false: the directory of existing features "
                    "(<split>_<layer>_features.npy); '' = EXTRACT_FEATURES.OUTPUT_DIR, else "
                    "CHECKPOINT.DIR/features. Extraction writes where the extract engine does"),
        "DATA_PARTITION": Key("TRAIN", str, "split whose features are clustered and labelled",
                              choices=_SPLITS),
        "TEST_PARTITION": Key("TEST", str, "split labelled by its nearest centroid when its "
                              "features exist; '' = none", choices=_SPLITS + ("",)),
        "DATASET_NAME": Key("", str, "dataset name in the output file names; '' = the split's "
                            "first DATASET_NAMES entry, else 'dataset'"),
        "LAYER_NAME": Key("", str, "feature layer to cluster (a LINEAR_EVAL_FEAT_POOL_OPS_MAP "
                          "name, e.g. res5 or res5avg); '' = the only layer present"),
    },
})


@dataclass
class KMeansResult:
    """What k-means found.

    Attributes:
        labels: (N,) int64 nearest-centroid id per row.
        distances: (N,) float32 squared L2 distance of each row to its centroid.
        centroids: (K, D) float32.
        objective: k-means objective (sum of squared distances) after each iteration.
    """

    labels: np.ndarray
    distances: np.ndarray
    centroids: np.ndarray
    objective: List[float]

    @property
    def sizes(self) -> np.ndarray:
        """(K,) int64 number of rows per cluster."""
        return np.bincount(self.labels, minlength=len(self.centroids)).astype(np.int64)

    @property
    def inertia(self) -> float:
        """Sum over rows of the squared distance to the assigned centroid."""
        return float(self.distances.astype(np.float64).sum())


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm + 1e-5 (VISSL's normalisation): (N, D) float32 -> same."""
    norms = np.linalg.norm(features, axis=1, keepdims=True) + 1e-5
    return np.ascontiguousarray(features / norms, dtype=np.float32)


def cluster_features(features: np.ndarray, num_clusters: int, *, n_iter: int = 50,
                     seed: int = 0) -> KMeansResult:
    """k-means (faiss) on L2-normalised features and the hard assignment of every row.

    Paper: [0] ClusterFit, https://arxiv.org/abs/1912.03330 (step 1).

    Args:
        features: (N, D) float features, one row per sample.
        num_clusters: K, 1 <= K <= N.
        n_iter: k-means iterations, >= 1.
        seed: faiss's seed (initial centroids, subsampling); equal seeds give equal labels.

    Returns:
        A :class:`KMeansResult`.

    Raises:
        ValueError: not (N, D), non-finite values, K outside [1, N], or n_iter < 1.

    Example:
        >>> result = cluster_features(np.random.rand(1000, 64).astype("float32"), 10, seed=0)
        >>> result.labels.shape, result.sizes.sum()
        ((1000,), 1000)
    """
    import faiss

    if features.ndim != 2 or not np.isfinite(features).all():
        raise ValueError(f"k-means needs finite (N, D) features, got shape {features.shape}"
                         + ("" if features.ndim != 2 else " with NaN/inf values"))
    rows, dim = features.shape
    if not 1 <= num_clusters <= rows:
        raise ValueError(f"CLUSTERFIT.NUM_CLUSTERS={num_clusters} must be in [1, {rows}] (the "
                         "number of samples); lower it or cluster more images")
    if n_iter < 1:
        raise ValueError(f"CLUSTERFIT.N_ITER must be >= 1, got {n_iter}")
    x = l2_normalize(features)
    kmeans = faiss.Kmeans(dim, int(num_clusters), niter=int(n_iter), seed=int(seed), verbose=False)
    kmeans.train(x)
    distances, labels = kmeans.index.search(x, 1)
    return KMeansResult(labels=labels.reshape(-1).astype(np.int64),
                        distances=distances.reshape(-1).astype(np.float32),
                        centroids=np.asarray(kmeans.centroids, dtype=np.float32),
                        objective=[float(v) for v in kmeans.obj])


def assign_to_centroids(features: np.ndarray, centroids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each L2-normalised row.

    Args:
        features: (M, D) float features.
        centroids: (K, D) float32 centroids from :func:`cluster_features`.

    Returns:
        ``(labels (M,) int64, squared distances (M,) float32)``.

    Raises:
        ValueError: D differs between features and centroids.
    """
    import faiss

    if features.ndim != 2 or features.shape[1] != centroids.shape[1]:
        raise ValueError(f"features {features.shape} do not match centroids {centroids.shape}")
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    distances, labels = index.search(l2_normalize(features), 1)
    return labels.reshape(-1).astype(np.int64), distances.reshape(-1).astype(np.float32)


def labels_by_sample(inds: np.ndarray, labels: np.ndarray, where: str) -> np.ndarray:
    """Reorder labels so that row i belongs to sample i.

    Args:
        inds: (N,) dataset indices of the feature rows.
        labels: (N,) labels in feature-row order.
        where: what the rows are, for messages.

    Returns:
        (N,) int64 labels indexed by sample.

    Raises:
        ValueError: the indices are not a permutation of 0..N-1 (some samples have no features).
    """
    order = np.sort(inds)
    if not np.array_equal(order, np.arange(len(inds))):
        raise ValueError(f"{where}: the feature rows do not cover samples 0..{len(inds) - 1} exactly "
                         "once; re-extract the features of the whole split (DATA_LIMIT=-1)")
    out = np.empty(len(inds), dtype=np.int64)
    out[inds] = labels
    return out


def cluster_stats(result: KMeansResult, **context: Any) -> Dict[str, Any]:
    """Statistics of a clustering, JSON-ready: sizes, inertia, objective, plus ``context``."""
    sizes = result.sizes
    return {**context, "num_samples": int(len(result.labels)),
            "dim": int(result.centroids.shape[1]), "num_clusters": int(len(sizes)),
            "inertia": result.inertia, "mean_squared_distance": result.inertia / len(result.labels),
            "objective_per_iteration": result.objective, "empty_clusters": int((sizes == 0).sum()),
            "smallest_cluster": int(sizes.min()), "largest_cluster": int(sizes.max()),
            "cluster_sizes": sizes.tolist()}


def _features_dir(cfg: DictConfig) -> Path:
    return Path(str(cfg.CLUSTERFIT.FEATURES.PATH or cfg.EXTRACT_FEATURES.OUTPUT_DIR
                    or Path(str(cfg.CHECKPOINT.DIR)) / "features"))


def _pick_layer(features_dir: Path, split: str, layer: str) -> str:
    from sslcore.benchmarks.features import list_layers

    present = list_layers(features_dir, split) if features_dir.is_dir() else []
    if layer:
        return layer
    if len(present) != 1:
        raise ValueError(f"set config.CLUSTERFIT.FEATURES.LAYER_NAME: {features_dir} holds "
                         f"{split} features of layers {present or 'none'}")
    return present[0]


def _check_config(cfg: DictConfig, split: str) -> None:
    c = cfg.CLUSTERFIT
    paths = {"CLUSTERFIT.OUTPUT_DIR": c.OUTPUT_DIR, "CLUSTERFIT.FEATURES.PATH": c.FEATURES.PATH,
             "EXTRACT_FEATURES.OUTPUT_DIR": cfg.EXTRACT_FEATURES.OUTPUT_DIR,
             "CHECKPOINT.DIR": cfg.CHECKPOINT.DIR}
    remote = [k for k, v in paths.items() if str(v).startswith("s3://")]
    if remote:
        raise ValueError(f"extract_cluster reads and writes local files; config.{remote[0]} is "
                         "s3://. Set it to a local directory and copy the results afterwards")
    if int(cfg.DATA[split].DATA_LIMIT) != -1:
        raise ValueError(f"config.DATA.{split}.DATA_LIMIT={cfg.DATA[split].DATA_LIMIT}: ClusterFit "
                         "labels every image of the split (step 2 reads one label per image); set "
                         f"config.DATA.{split}.DATA_LIMIT=-1")


def extract_cluster(cfg: DictConfig, device: torch.device) -> Path:
    """ClusterFit step 1: (extract), cluster, label; return the DATA_PARTITION labels file.

    Args:
        cfg: the resolved config (CLUSTERFIT, plus MODEL/DATA/EXTRACT_FEATURES for extraction).
        device: where features are extracted.

    Returns:
        Path of ``<stem>_lbls.npy`` (int64 (N,), row i = cluster of sample i).

    Raises:
        ValueError: DATA_LIMIT set, features missing a layer or a sample, K > N, s3:// paths.
        FileNotFoundError: ``FEATURES.EXTRACT`` is false and no features are at ``FEATURES.PATH``.
    """
    from sslcore.benchmarks.features import feature_paths, load_features
    from sslcore.engine.extract import extract_features

    c = cfg.CLUSTERFIT
    split = str(c.FEATURES.DATA_PARTITION)
    _check_config(cfg, split)
    if c.FEATURES.EXTRACT:
        features_dir = Path(str(extract_features(cfg, device)))
    else:
        features_dir = _features_dir(cfg)
    out_dir = Path(str(c.OUTPUT_DIR or cfg.CHECKPOINT.DIR))
    names = list(cfg.DATA[split].DATASET_NAMES)
    name = str(c.FEATURES.DATASET_NAME or (names[0] if names else "dataset"))
    labels_file = out_dir / f"{name}_{split.lower()}_N{int(c.NUM_CLUSTERS)}_faiss_lbls.npy"
    if is_primary():
        layer = _pick_layer(features_dir, split.lower(), str(c.FEATURES.LAYER_NAME))
        feats, _, inds = load_features(features_dir, split.lower(), layer)
        log.info("clustering %s %s features %s into %d clusters (%d iterations, seed %d)",
                 split.lower(), layer, feats.shape, int(c.NUM_CLUSTERS), int(c.N_ITER),
                 int(cfg.SEED_VALUE))
        result = cluster_features(feats, int(c.NUM_CLUSTERS), n_iter=int(c.N_ITER),
                                  seed=int(cfg.SEED_VALUE))
        context = {"split": split.lower(), "layer": layer, "features_dir": str(features_dir),
                   "backend": "faiss", "n_iter": int(c.N_ITER), "seed": int(cfg.SEED_VALUE),
                   "features_l2_normalized": True}
        _write(out_dir, labels_file, labels_by_sample(inds, result.labels, f"{split} features"),
               result.centroids, cluster_stats(result, **context))
        test = str(c.FEATURES.TEST_PARTITION)
        if test and test != split and feature_paths(features_dir, test.lower(), layer)["features"].is_file():
            t_feats, _, t_inds = load_features(features_dir, test.lower(), layer)
            t_labels, t_dist = assign_to_centroids(t_feats, result.centroids)
            t_file = out_dir / f"{name}_{test.lower()}_N{int(c.NUM_CLUSTERS)}_faiss_lbls.npy"
            t_result = KMeansResult(t_labels, t_dist, result.centroids, [])
            _write(out_dir, t_file, labels_by_sample(t_inds, t_labels, f"{test} features"), None,
                   cluster_stats(t_result, **{**context, "split": test.lower()}))
    barrier()
    return labels_file


def _write(out_dir: Path, labels_file: Path, labels: np.ndarray, centroids: Any,
           stats: Dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = labels_file.name[: -len("_lbls.npy")]
    np.save(labels_file, labels)
    if centroids is not None:
        np.save(out_dir / f"{stem}_centroids.npy", centroids)
    (out_dir / f"{stem}_stats.json").write_text(json.dumps(stats, indent=1))
    log.info("wrote %d cluster labels to %s (%d empty clusters, inertia %.4g)", len(labels),
             labels_file, stats["empty_clusters"], stats["inertia"])


def write_cluster_files(out_dir: Path, labels_file: Path, labels: np.ndarray, centroids: Any,
                        stats: Dict[str, Any]) -> None:
    """Write one split's ``<stem>_lbls.npy``, ``<stem>_centroids.npy`` (when given) and ``<stem>_stats.json``.

    The files the engine writes, for callers outside it (the ``clusterfit`` pipeline stage).

    Args:
        out_dir: the output directory (created).
        labels_file: ``out_dir / "<stem>_lbls.npy"``.
        labels: (N,) int64 cluster per sample (row i = sample i, see :func:`labels_by_sample`).
        centroids: (K, D) float32, or None (a split assigned to existing centroids).
        stats: :func:`cluster_stats` output.
    """
    _write(out_dir, labels_file, labels, centroids, stats)
