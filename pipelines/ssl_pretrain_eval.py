"""ssl_pretrain_eval: pretrain a trunk, then judge it with the whole benchmark suite.

    data_copy ──────┬─ pretrain ── extract(checkpoint) ─┬─ knn, linear ─────────────────┐
                    ├─ extract(random_init) ────────────┼─ knn, linear ─────────────────┤
                    └─ extract(raw_pixels) ─────────────┴─ knn, linear ─────────────────┤
    data_copy ──────┬─ extract scenes(checkpoint) ───────── svm, low_shot ──────────────┤
     (scenes)       └─ extract scenes(random_init) ──────── svm, low_shot ──────────────┼─ report
    checkpoint ─────── detection, retrieval, linear_eval, finetune ─────────────────────┤
    random init ────── detection, retrieval ────────────────────────────────────────────┘

The random-init trunk and raw pixels are the floors a pretrained trunk must clear (design.md
section 8). Fashion-MNIST scenes (VOC2007 layout, built by data_copy) feed the VOC07 SVM,
low-shot and detection benchmarks; each benchmark after extraction has a ``run_*`` switch
(:mod:`pipelines.stages`). Cluster settings (GPUs, node selector, tolerations, dataset PVC, S3 secret) are run-time
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
from components.pretrain import pretrain
from components.report import report
from pipelines.cluster import DATASET_MOUNT, PIPELINE_ROOT, named
from pipelines.stages import (add_feature_benchmarks, add_scene_benchmarks, add_scenes_copy,
                              add_trunk_benchmarks, stage_options)

PIPELINE_NAME = "ssl-pretrain-eval"

Outputs = NamedTuple("Outputs", [("summary", Artifact), ("report", HTML)])


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Self-supervised pretraining, then the benchmark suite (kNN, linear, VOC07 SVM, "
                "low-shot, detection, retrieval, linear eval, finetuning) of the pretrained trunk "
                "next to a randomly initialised trunk and raw pixels, gathered in one HTML report.",
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
        scenes_source: the multi-label / detection set in VOC2007 layout: "fashion_mnist_scenes"
            (built from a seed) or a VOC-layout directory or URI.
        scenes_limit_train, scenes_limit_test: scenes in trainval and test; 0 = 5000 each.
        run_svm: run the VOC07 SVM (VISSL's protocol) on the scenes' features.
        svm_layers: feature layers for the SVM; each must be one the extraction recipe writes.
        run_low_shot: run low-shot SVMs (5 samples of k positives per class).
        low_shot_k_values: the k values.
        run_detection: train and test Faster R-CNN on the scenes (trunk converted to its backbone).
        detection_iterations: its training iterations (batch 8).
        run_retrieval: run instance retrieval on Fashion-MNIST (test queries, train database).
        retrieval_descriptor: "gem" or "rmac".
        retrieval_whiten: PCA whitening learnt on a separate train slice.
        retrieval_queries, retrieval_database: class-stratified test queries and train database
            images (at most the split's size).
        run_linear_eval: train eval_mlp heads on several layers through the frozen trunk, with
            augmentation (slow on CPU: off by default).
        linear_eval_epochs: its epochs; 0 = the recipe's.
        run_finetune: finetune the whole network (slow on CPU: off by default).
        finetune_mode: "fulltune" (all train labels) or "semi_supervised" (a per-class subset).
        finetune_fraction: the subset for semi_supervised, e.g. 0.01 or 0.1.
        finetune_epochs: its epochs; 0 = the recipe's.
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
        model = model_name.replace("_", " ")
        named(task, f"extract features ({model})", **where,
              **(gpu if model_name != "raw_pixels" else {}))
        results.update(add_feature_benchmarks(
            model, task.outputs["features"], layer="pixels" if model_name == "raw_pixels" else "res5avg",
            linear_epochs=linear_epochs, where=where))

    options = stage_options(locals())
    scenes = add_scenes_copy(scenes_source, scenes_limit_train, scenes_limit_test,
                             dataset_pvc=dataset_pvc, where=where)
    for model, weights in (("pretrained", {"checkpoint": checkpoint}), ("random init", {})):
        source = "checkpoint" if weights else "random_init"
        scene_features = named(extract_features(source=source, dataset=scenes, config=extract_config,
                                                overrides=extra_overrides, **weights),
                               f"extract scene features ({model})", **where, **gpu)
        results.update(add_scene_benchmarks(model, scene_features.outputs["features"],
                                            options=options, where=where))
        results.update(add_trunk_benchmarks(model, checkpoint=weights.get("checkpoint"),
                                            dataset=dataset, scenes=scenes,
                                            extract_config=extract_config, options=options,
                                            where=where, gpu=gpu))

    summary = named(report(checkpoint=checkpoint, results_uri=results_uri, **results), "report",
                    **where)
    return Outputs(summary=summary.outputs["summary"], report=summary.outputs["html"])
