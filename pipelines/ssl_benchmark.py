"""ssl_benchmark: judge an existing checkpoint, for CI and for checkpoints trained elsewhere.

    data_copy ── extract(checkpoint_uri) ─┬─ knn ────┬─ report ──> results_uri/summary.json
                                          └─ linear ─┘

The checkpoint is read from ``checkpoint_uri`` (``s3://`` or a path the pod sees) through
``sslcore.storage``. ``sslcore pipelines submit ssl_benchmark ... --fail-under knn.top1=80``
starts a run, waits for it and fails when a metric is below its threshold
(examples/ci/github-actions-ssl-benchmark.yml).
"""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact

from components import DEFAULT_EXTRACT_CONFIG
from components.data_copy import data_copy
from components.extract_features import extract_features
from components.knn import knn
from components.linear import linear
from components.report import report
from pipelines.cluster import PIPELINE_ROOT, named

PIPELINE_NAME = "ssl-benchmark"

Outputs = NamedTuple("Outputs", [("summary", Artifact), ("report", HTML)])


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="kNN and linear benchmarks of an existing checkpoint (s3:// or path); the "
                "summary goes to results_uri for CI.",
    pipeline_root=PIPELINE_ROOT,
)
def ssl_benchmark(
    checkpoint_uri: str,
    dataset_source: str = "fashion_mnist",
    limit_train: int = 0,
    limit_test: int = 0,
    extract_config: str = DEFAULT_EXTRACT_CONFIG,
    extra_overrides: List[str] = [],
    linear_epochs: int = 0,
    results_uri: str = "",
    pod_gpus: int = 0,
    gpu_type: str = "nvidia.com/gpu",
    dataset_pvc: str = "sslcore-datasets",
    node_selector: dict = {},
    tolerations: list = [],
) -> Outputs:
    """Benchmark one checkpoint.

    Args:
        checkpoint_uri: the checkpoint file: ``s3://bucket/run/model_final_checkpoint_phaseN.torch``
            or a path inside the pod; its trunk must match ``extract_config`` (+ overrides).
        dataset_source: a built-in set ("fashion_mnist"), a dataset directory or an ``s3://`` /
            ``https://`` location (data_copy).
        limit_train, limit_test: class-stratified subsets; 0 = all.
        extract_config: the feature extraction recipe (unaugmented, the checkpoint's trunk).
        extra_overrides: VISSL-style overrides for extraction, e.g. the trunk's width.
        linear_epochs: epochs of the linear benchmark; 0 = its default.
        results_uri: directory or ``s3://`` prefix that receives ``summary.json``.
        pod_gpus, gpu_type: accelerator limit and type of the extraction pod.
        dataset_pvc: PersistentVolumeClaim with the datasets, mounted at /datasets.
        node_selector, tolerations: placement of every pod (see ssl_pretrain_eval).
    """
    where = dict(node_selector=node_selector, tolerations=tolerations)
    data = named(data_copy(source=dataset_source, limit_train=limit_train, limit_test=limit_test),
                 "data copy", dataset_pvc=dataset_pvc, **where)
    dataset = data.outputs["dataset"]
    extracted = named(extract_features(source="checkpoint", dataset=dataset, config=extract_config,
                                       overrides=extra_overrides, checkpoint_uri=checkpoint_uri),
                      "extract features", gpu_type=gpu_type, gpus=pod_gpus, **where)
    features = extracted.outputs["features"]
    knn_task = named(knn(features=features, layer="res5avg"), "knn", **where)
    linear_task = named(linear(features=features, layer="res5avg", epochs=linear_epochs),
                        "linear", **where)
    summary = named(report(pretrained_knn=knn_task.outputs["metrics"],
                           pretrained_linear=linear_task.outputs["metrics"],
                           title="sslcore: benchmark of a checkpoint",
                           checkpoint_uri=checkpoint_uri, results_uri=results_uri),
                    "report", **where)
    return Outputs(summary=summary.outputs["summary"], report=summary.outputs["html"])
