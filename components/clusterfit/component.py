"""clusterfit: ClusterFit step 1, k-means pseudo-labels of extracted features, with cluster metrics."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def clusterfit(
    features: Input[Artifact],
    labels: Output[Artifact],
    metrics: Output[Metrics],
    num_clusters: int = 100,
    n_iter: int = 50,
    layer: str = "res5avg",
    seed: int = 0,
):
    """Cluster the train features with faiss k-means and label every train (and test) sample.

    Adapter for ``sslcore.benchmarks.clusterfit.run_clusterfit_stage`` (ClusterFit, Yan et al.
    2020, https://arxiv.org/abs/1912.03330, step 1).

    Args:
        features: directory of ``<split>_<layer>_{features,targets,inds}.npy`` as written by
            extract_features; the train split is clustered, the test split (if present) is
            assigned to the nearest centroid.
        labels: output directory, files named ``dataset_<split>_N<K>_faiss_*``: ``_lbls.npy``
            (int64 (N,), row i = cluster of sample i; step 2's LABEL_PATHS), ``_centroids.npy``
            (float32 (K, D), train only) and ``_stats.json`` (sizes, inertia, objective per
            iteration). Metadata ``labels_file`` names the train labels file.
        metrics: output directory holding ``metrics.json`` (``{"benchmark": "clusterfit",
            "records": [{"name": "inertia" | "mean_squared_distance" | "smallest_cluster" |
            "largest_cluster" | "empty_clusters" | "NMI" | "ARI", "value", "unit", "layer",
            "params": {"num_clusters", "n_iter", "layer", "seed", "split"}}], "cluster_sizes":
            {split: [K ints]}}``); NMI/ARI (percent, against the features' targets) only when the
            targets are class indices. Each record is also a KFP metric ``<split>_<name>``.
        num_clusters: K of k-means (VISSL's CLUSTERFIT.NUM_CLUSTERS), at most the train size.
        n_iter: k-means iterations (CLUSTERFIT.N_ITER).
        layer: the feature layer to cluster (CLUSTERFIT.FEATURES.LAYER_NAME).
        seed: the k-means seed.
    """
    import json
    import os

    from sslcore.benchmarks.clusterfit import run_clusterfit_stage

    os.makedirs(labels.path, exist_ok=True)
    os.makedirs(metrics.path, exist_ok=True)
    result = run_clusterfit_stage(features.path, labels.path, metrics.path, num_clusters=num_clusters,
                                  n_iter=n_iter, layer=layer, seed=seed)
    labels.metadata["labels_file"] = os.path.basename(result["labels_files"]["train"])
    labels.metadata["num_clusters"] = num_clusters
    for record in result["records"]:
        metrics.log_metric(f"{record['params']['split']}_{record['name']}", float(record["value"]))
    print(json.dumps(result["records"], indent=2))
