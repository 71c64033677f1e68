"""clusterfit: ClusterFit on an existing checkpoint: cluster its features, train on the clusters.

    data_copy ───────────┬─ extract(source trunk) ── clusterfit (k-means labels) ─┐
    import_checkpoint ───┘                                                         │
    data_copy ── pretrain(config=clusterfit recipe, labels) ───────────────────────┘
                   └─ extract(new trunk) ── knn, linear ── report (+ cluster statistics)

ClusterFit (Yan et al. 2020, https://arxiv.org/abs/1912.03330): step 1 clusters the train
features of a pretrained trunk with faiss k-means (``num_clusters``); step 2 trains a network
from scratch on those cluster ids (``clusterfit_config``, a supervised recipe whose last head has
``num_clusters`` outputs: the Fashion-MNIST recipe's has 100); the new trunk is then benchmarked.
"""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact

from components import DEFAULT_EXTRACT_CONFIG
from components.clusterfit import clusterfit as clusterfit_component
from components.data_copy import data_copy
from components.extract_features import extract_features
from components.import_checkpoint import import_checkpoint
from components.pretrain import pretrain
from components.report import report
from pipelines.cluster import DATASET_MOUNT, PIPELINE_ROOT, named
from pipelines.stages import add_feature_benchmarks

PIPELINE_NAME = "clusterfit"
DEFAULT_CLUSTERFIT_CONFIG = "pretrain/clusterfit/clusterfit_fashion_mnist"

Outputs = NamedTuple("Outputs", [("summary", Artifact), ("report", HTML)])


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="ClusterFit: k-means pseudo-labels from an existing checkpoint's features, a new "
                "trunk trained on them, and its kNN / linear benchmarks.",
    pipeline_root=PIPELINE_ROOT,
)
def clusterfit(
    checkpoint_uri: str,
    dataset_source: str = "fashion_mnist",
    limit_train: int = 0,
    limit_test: int = 0,
    extract_config: str = DEFAULT_EXTRACT_CONFIG,
    extra_overrides: List[str] = [],
    num_clusters: int = 100,
    n_iter: int = 50,
    clusterfit_config: str = DEFAULT_CLUSTERFIT_CONFIG,
    clusterfit_overrides: List[str] = [],
    linear_epochs: int = 0,
    results_uri: str = "",
    pod_gpus: int = 0,
    gpu_type: str = "nvidia.com/gpu",
    dataset_pvc: str = "sslcore-datasets",
    node_selector: dict = {},
    tolerations: list = [],
) -> Outputs:
    """Run ClusterFit on one checkpoint.

    Args:
        checkpoint_uri: the trunk whose features are clustered: ``s3://...`` or a path.
        dataset_source, limit_train, limit_test: the data (see ssl_pretrain_eval).
        extract_config, extra_overrides: extraction recipe and overrides for both trunks.
        num_clusters: k-means K (CLUSTERFIT.NUM_CLUSTERS); the step-2 recipe's last head must
            have K outputs (set it with clusterfit_overrides, e.g.
            ``config.MODEL.HEAD.PARAMS=[[mlp,{dims:[64,K]}]]``).
        n_iter: k-means iterations (CLUSTERFIT.N_ITER).
        clusterfit_config: step 2's recipe (trained from scratch on the cluster ids).
        clusterfit_overrides: overrides for step 2, e.g. ``config.OPTIMIZER.num_epochs=2``.
        linear_epochs: epochs of the linear benchmark; 0 = its default.
        results_uri: directory or ``s3://`` prefix that receives ``summary.json``.
        pod_gpus, gpu_type, dataset_pvc, node_selector, tolerations: cluster settings (see
            ssl_pretrain_eval).
    """
    where = dict(node_selector=node_selector, tolerations=tolerations)
    gpu = dict(gpu_type=gpu_type, gpus=pod_gpus)
    dataset = named(data_copy(source=dataset_source, limit_train=limit_train,
                              limit_test=limit_test),
                    "data copy", dataset_pvc=dataset_pvc, **where).outputs["dataset"]
    source = named(import_checkpoint(checkpoint_uri=checkpoint_uri), "import checkpoint",
                   **where).outputs["model"]
    source_features = named(extract_features(source="checkpoint", dataset=dataset,
                                             checkpoint=source, config=extract_config,
                                             overrides=extra_overrides),
                            "extract features (source trunk)", **where, **gpu)
    clusters = named(clusterfit_component(features=source_features.outputs["features"],
                                          num_clusters=num_clusters, n_iter=n_iter),
                     "clusterfit (k-means labels)", **where)
    trained = named(pretrain(dataset=dataset, config=clusterfit_config,
                             overrides=clusterfit_overrides, labels=clusters.outputs["labels"],
                             dataset_mount=DATASET_MOUNT),
                    "train on cluster labels", dataset_pvc=dataset_pvc, **where, **gpu)
    checkpoint = trained.outputs["model"]
    features = named(extract_features(source="checkpoint", dataset=dataset, checkpoint=checkpoint,
                                      config=extract_config, overrides=extra_overrides),
                     "extract features (ClusterFit trunk)", **where, **gpu)
    results = add_feature_benchmarks("pretrained", features.outputs["features"], layer="res5avg",
                                     linear_epochs=linear_epochs, where=where)
    summary = named(report(title="sslcore: ClusterFit", checkpoint=checkpoint,
                           pretrained_clusterfit=clusters.outputs["metrics"],
                           results_uri=results_uri, **results),
                    "report", **where)
    return Outputs(summary=summary.outputs["summary"], report=summary.outputs["html"])
