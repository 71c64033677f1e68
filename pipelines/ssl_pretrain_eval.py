"""ssl_pretrain_eval: pretrain a trunk, then judge its features against two baselines.

    data_copy ─┬─ pretrain ── extract(checkpoint) ──┬─ knn ──────┐
               │                                    └─ linear ───┤
               ├─ extract(random_init) ─────────────┬─ knn ──────┤
               │                                    └─ linear ───┼─ report
               └─ extract(raw_pixels) ──────────────┬─ knn ──────┤
                                                    └─ linear ───┘

The random-init trunk and raw pixels are the floors a pretrained trunk must clear (design.md
section 8). Cluster settings (GPUs, node selector, tolerations, dataset PVC, S3 secret) are run-time
parameters applied by :mod:`pipelines.cluster`; with ``num_nodes`` > 1 pretraining runs as a
PyTorchJob. The pipeline returns the report's JSON summary and HTML page, so a local run
(``sslcore pipelines run ssl_pretrain_eval``) can print the results.
"""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact

from components import DEFAULT_EXTRACT_CONFIG, DEFAULT_PRETRAIN_CONFIG
from components.data_copy import data_copy
from components.extract_features import extract_features
from components.knn import knn
from components.linear import linear
from components.pretrain import pretrain
from components.report import report
from pipelines.cluster import DATASET_MOUNT, PIPELINE_ROOT, named

PIPELINE_NAME = "ssl-pretrain-eval"

Outputs = NamedTuple("Outputs", [("summary", Artifact), ("report", HTML)])


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Self-supervised pretraining, then kNN and linear benchmarks of the pretrained "
                "trunk, a randomly initialised trunk and raw pixels, gathered in one HTML report.",
    pipeline_root=PIPELINE_ROOT,
)
def ssl_pretrain_eval(
    dataset_source: str = "fashion_mnist",
    limit_train: int = 0,
    limit_test: int = 0,
    pretrain_config: str = DEFAULT_PRETRAIN_CONFIG,
    extract_config: str = DEFAULT_EXTRACT_CONFIG,
    extra_overrides: List[str] = [],
    linear_epochs: int = 0,
    num_nodes: int = 1,
    gpus_per_node: int = 1,
    pod_gpus: int = 0,
    gpu_type: str = "nvidia.com/gpu",
    checkpoint_uri: str = "",
    results_uri: str = "",
    dataset_pvc: str = "sslcore-datasets",
    node_selector: dict = {},
    tolerations: list = [],
) -> Outputs:
    """Pretrain and evaluate.

    Args:
        dataset_source: a built-in set ("fashion_mnist"), a dataset directory (e.g. on the
            dataset PVC under /datasets) or an ``s3://`` / ``https://`` location (data_copy).
        limit_train: class-stratified subset of the train split; 0 = all.
        limit_test: class-stratified subset of the test split; 0 = all.
        pretrain_config: the pretraining recipe (sslcore/config/<name>.yaml).
        extract_config: the feature extraction recipe: unaugmented transforms, and the same
            trunk as pretrain_config.
        extra_overrides: VISSL-style overrides for pretraining and trunk feature extraction
            alike, e.g. ["config.OPTIMIZER.num_epochs=1"]; trunk overrides thus reach both.
        linear_epochs: epochs of the linear benchmark; 0 = its default.
        num_nodes: pretraining machines; > 1 runs a PyTorchJob (needs checkpoint_uri).
        gpus_per_node: GPUs per PyTorchJob pod when num_nodes > 1.
        pod_gpus: GPUs of the pods that pretrain (one node) and extract features.
        gpu_type: the accelerator resource, e.g. "nvidia.com/gpu".
        checkpoint_uri: ``s3://`` run directory for the checkpoints (resumable across pod
            restarts; required for num_nodes > 1); empty: checkpoints stay in the pipeline root.
        results_uri: directory or ``s3://`` prefix that receives ``summary.json``
            (``sslcore pipelines submit`` reads it); empty: none.
        dataset_pvc: PersistentVolumeClaim with the datasets, mounted at /datasets.
        node_selector: node labels every pod must match, e.g. {"pool": "gpu"}.
        tolerations: Kubernetes tolerations of every pod, e.g.
            [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}].
    """
    where = dict(node_selector=node_selector, tolerations=tolerations)
    gpu = dict(gpu_type=gpu_type, gpus=pod_gpus)
    data = named(data_copy(source=dataset_source, limit_train=limit_train, limit_test=limit_test),
                 "data copy", dataset_pvc=dataset_pvc, **where)
    dataset = data.outputs["dataset"]

    trained = named(pretrain(dataset=dataset, config=pretrain_config, overrides=extra_overrides,
                             num_nodes=num_nodes, gpus_per_node=gpus_per_node,
                             checkpoint_uri=checkpoint_uri, dataset_pvc=dataset_pvc,
                             dataset_mount=DATASET_MOUNT),
                    "pretrain", dataset_pvc=dataset_pvc, **where, **gpu)
    checkpoint = trained.outputs["model"]

    extracted = {
        "pretrained": extract_features(source="checkpoint", dataset=dataset, checkpoint=checkpoint,
                                       config=extract_config, overrides=extra_overrides),
        "random_init": extract_features(source="random_init", dataset=dataset,
                                        config=extract_config, overrides=extra_overrides),
        "raw_pixels": extract_features(source="raw_pixels", dataset=dataset),
    }
    results = {}
    for model_name, task in extracted.items():
        named(task, f"extract features ({model_name})", **where,
              **(gpu if model_name != "raw_pixels" else {}))
        layer = "pixels" if model_name == "raw_pixels" else "res5avg"
        features = task.outputs["features"]
        knn_task = named(knn(features=features, layer=layer), f"knn ({model_name})", **where)
        linear_task = named(linear(features=features, layer=layer, epochs=linear_epochs),
                            f"linear ({model_name})", **where)
        results[f"{model_name}_knn"] = knn_task.outputs["metrics"]
        results[f"{model_name}_linear"] = linear_task.outputs["metrics"]

    summary = named(report(checkpoint=checkpoint, results_uri=results_uri, **results), "report",
                    **where)
    return Outputs(summary=summary.outputs["summary"], report=summary.outputs["html"])
