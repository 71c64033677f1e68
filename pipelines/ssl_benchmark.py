"""ssl_benchmark: judge an existing checkpoint, for CI and for checkpoints trained elsewhere.

    import_checkpoint ─┬─ extract(dataset) ── knn, linear ───────────────┐
    data_copy ─────────┤                                                  │
    data_copy (scenes) ┼─ extract(scenes) ─── svm, low_shot ─────────────┼─ report ──> results_uri/summary.json
                       └─ detection, retrieval, linear_eval, finetune ───┘

The checkpoint is read from ``checkpoint_uri`` (``s3://`` or a path the pod sees) through
``sslcore.storage``; every benchmark after extraction has a ``run_*`` switch
(:mod:`pipelines.stages`, the same stages as ssl_pretrain_eval). ``sslcore pipelines submit ssl_benchmark ... --fail-under knn.top1=80``
starts a run, waits for it and fails when a metric is below its threshold
(examples/ci/github-actions-ssl-benchmark.yml).
"""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact

from components import DEFAULT_EXTRACT_CONFIG
from components.data_copy import data_copy
from components.extract_features import extract_features
from components.import_checkpoint import import_checkpoint
from components.report import report
from pipelines.cluster import PIPELINE_ROOT, named
from pipelines.stages import (add_feature_benchmarks, add_scene_benchmarks, add_scenes_copy,
                              add_trunk_benchmarks, stage_options)

PIPELINE_NAME = "ssl-benchmark"

Outputs = NamedTuple("Outputs", [("summary", Artifact), ("report", HTML)])


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="The benchmark suite (kNN, linear, VOC07 SVM, low-shot, detection, retrieval, "
                "linear eval, finetuning) of an existing checkpoint (s3:// or path); the summary "
                "goes to results_uri for CI.",
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
    scenes_source: str = "fashion_mnist_scenes",
    scenes_limit_train: int = 0,
    scenes_limit_test: int = 0,
    run_svm: bool = True,
    svm_layers: list = ["res5avg"],
    run_low_shot: bool = True,
    low_shot_k_values: list = [1, 2, 4, 8, 16, 32, 64, 96],
    run_detection: bool = True,
    detection_iterations: int = 300,
    run_retrieval: bool = True,
    retrieval_descriptor: str = "gem",
    retrieval_whiten: bool = False,
    retrieval_queries: int = 500,
    retrieval_database: int = 5000,
    run_linear_eval: bool = False,
    linear_eval_epochs: int = 0,
    run_finetune: bool = False,
    finetune_mode: str = "semi_supervised",
    finetune_fraction: float = 0.1,
    finetune_epochs: int = 0,
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
        scenes_source ... finetune_epochs: the benchmark stages' data, switches and settings, as
            in ssl_pretrain_eval.
    """
    where = dict(node_selector=node_selector, tolerations=tolerations)
    data = named(data_copy(source=dataset_source, limit_train=limit_train, limit_test=limit_test),
                 "data copy", dataset_pvc=dataset_pvc, **where)
    dataset = data.outputs["dataset"]
    checkpoint = named(import_checkpoint(checkpoint_uri=checkpoint_uri), "import checkpoint",
                       **where).outputs["model"]
    gpu = dict(gpu_type=gpu_type, gpus=pod_gpus)
    extracted = named(extract_features(source="checkpoint", dataset=dataset, config=extract_config,
                                       overrides=extra_overrides, checkpoint=checkpoint),
                      "extract features", **where, **gpu)
    results = add_feature_benchmarks("pretrained", extracted.outputs["features"], layer="res5avg",
                                     linear_epochs=linear_epochs, where=where)
    options = stage_options(locals())
    scenes = add_scenes_copy(scenes_source, scenes_limit_train, scenes_limit_test,
                             dataset_pvc=dataset_pvc, where=where)
    scene_features = named(extract_features(source="checkpoint", dataset=scenes,
                                            config=extract_config, overrides=extra_overrides,
                                            checkpoint=checkpoint),
                           "extract scene features", **where, **gpu)
    results.update(add_scene_benchmarks("pretrained", scene_features.outputs["features"],
                                        options=options, where=where))
    results.update(add_trunk_benchmarks("pretrained", checkpoint=checkpoint, dataset=dataset,
                                        scenes=scenes, extract_config=extract_config,
                                        options=options, where=where, gpu=gpu))
    summary = named(report(title="sslcore: benchmark of a checkpoint", checkpoint=checkpoint,
                           checkpoint_uri=checkpoint_uri, results_uri=results_uri, **results),
                    "report", **where)
    return Outputs(summary=summary.outputs["summary"], report=summary.outputs["html"])
