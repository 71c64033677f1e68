"""The benchmark stages after extraction, shared by ssl_pretrain_eval, ssl_benchmark and clusterfit.

One function wires one model's benchmarks (the pretrained trunk, or the same trunk at random init)
so that every pipeline runs the same stages with the same parameters:

    features (dataset) ──┬─ knn
                         └─ linear            (frozen features, design.md section 9)
    features (scenes) ───┬─ svm               VOC07 SVM on Fashion-MNIST scenes
                         └─ low_shot          k positives per class, 5 samples
    checkpoint ──────────┬─ detection         Faster R-CNN on the scenes, trunk converted
                         ├─ retrieval         GeM / R-MAC on Fashion-MNIST
                         ├─ linear_eval       eval_mlp heads through the frozen trunk (pretrained only)
                         └─ finetune          whole network, 1%/10% subsets (pretrained only)

All run in parallel once their inputs exist. A benchmark switched off by its ``run_*`` parameter
still runs as a task that writes an empty ``metrics.json`` (``enabled=False``): KFP cannot hand
an artifact from inside a ``dsl.If`` to the report outside it, and ``kfp.local`` does not run
``dsl.OneOf`` over artifacts.
"""

from typing import Any, Dict, Optional

from components.data_copy import data_copy
from components.detection import detection
from components.finetune import finetune
from components.knn import knn
from components.linear import linear
from components.linear_eval import linear_eval
from components.low_shot import low_shot
from components.retrieval import retrieval
from components.svm import svm
from pipelines.cluster import named

# the report component's input prefix for each model
MODEL_KEYS = {"pretrained": "pretrained", "random init": "random_init", "raw pixels": "raw_pixels"}
# the pipeline parameters that configure the stages (same names in every pipeline)
STAGE_PARAMETERS = ("run_svm", "svm_layers", "run_low_shot", "low_shot_k_values", "run_detection",
                    "detection_iterations", "run_retrieval", "retrieval_descriptor",
                    "retrieval_whiten", "retrieval_queries", "retrieval_database", "run_linear_eval", "linear_eval_epochs", "run_finetune",
                    "finetune_mode", "finetune_fraction", "finetune_epochs")


def stage_options(pipeline_locals: Dict[str, Any]) -> Dict[str, Any]:
    """The stage parameters out of a pipeline function's ``locals()``.

    Raises:
        KeyError: the pipeline lacks one of :data:`STAGE_PARAMETERS` (its name).
    """
    return {name: pipeline_locals[name] for name in STAGE_PARAMETERS}


def add_scenes_copy(source: Any, limit_train: Any, limit_test: Any, *, dataset_pvc: Any,
                    where: Dict[str, Any]) -> Any:
    """The scenes set (VOC2007 layout plus its disk_filelist view) as a Dataset output."""
    task = data_copy(source=source, limit_train=limit_train, limit_test=limit_test)
    return named(task, "data copy (scenes)", dataset_pvc=dataset_pvc, **where).outputs["dataset"]


def add_feature_benchmarks(model: str, features: Any, *, layer: str, linear_epochs: Any,
                           where: Dict[str, Any]) -> Dict[str, Any]:
    """kNN and linear on one model's extracted features; returns report inputs -> metrics."""
    key = MODEL_KEYS[model]
    knn_task = named(knn(features=features, layer=layer), f"knn ({model})", **where)
    linear_task = named(linear(features=features, layer=layer, epochs=linear_epochs),
                        f"linear ({model})", **where)
    return {f"{key}_knn": knn_task.outputs["metrics"],
            f"{key}_linear": linear_task.outputs["metrics"]}


def add_scene_benchmarks(model: str, scene_features: Any, *, options: Dict[str, Any],
                         where: Dict[str, Any]) -> Dict[str, Any]:
    """VOC07 SVM and low-shot SVM on one model's features of the scenes."""
    key = MODEL_KEYS[model]
    svm_task = named(svm(features=scene_features, layers=options["svm_layers"],
                         enabled=options["run_svm"]), f"svm ({model})", **where)
    low_shot_task = named(low_shot(features=scene_features, k_values=options["low_shot_k_values"],
                                   enabled=options["run_low_shot"]), f"low-shot ({model})", **where)
    return {f"{key}_svm": svm_task.outputs["metrics"],
            f"{key}_low_shot": low_shot_task.outputs["metrics"]}


def add_trunk_benchmarks(model: str, *, checkpoint: Optional[Any], dataset: Any, scenes: Any,
                         extract_config: Any, options: Dict[str, Any], where: Dict[str, Any],
                         gpu: Dict[str, Any]) -> Dict[str, Any]:
    """Detection and retrieval (both models), linear_eval and finetune (pretrained only).

    ``checkpoint`` None means the trunk of ``extract_config`` at random init.
    """
    key = MODEL_KEYS[model]
    weights = {"checkpoint": checkpoint} if checkpoint is not None else {}
    detection_task = named(detection(dataset=scenes, iterations=options["detection_iterations"],
                                     enabled=options["run_detection"], **weights),
                           f"detection ({model})", **where, **gpu)
    retrieval_task = named(retrieval(dataset=dataset, config=extract_config,
                                     descriptor=options["retrieval_descriptor"],
                                     whiten=options["retrieval_whiten"],
                                     num_queries=options["retrieval_queries"],
                                     num_database=options["retrieval_database"],
                                     enabled=options["run_retrieval"], **weights),
                           f"retrieval ({model})", **where, **gpu)
    results = {f"{key}_detection": detection_task.outputs["metrics"],
               f"{key}_retrieval": retrieval_task.outputs["metrics"]}
    if checkpoint is None:
        return results
    linear_eval_task = named(linear_eval(dataset=dataset, checkpoint=checkpoint,
                                         epochs=options["linear_eval_epochs"],
                                         enabled=options["run_linear_eval"]),
                             f"linear eval ({model})", **where, **gpu)
    finetune_task = named(finetune(dataset=dataset, checkpoint=checkpoint,
                                   mode=options["finetune_mode"],
                                   fraction=options["finetune_fraction"],
                                   epochs=options["finetune_epochs"],
                                   enabled=options["run_finetune"]),
                          f"finetune ({model})", **where, **gpu)
    results[f"{key}_linear_eval"] = linear_eval_task.outputs["metrics"]
    results[f"{key}_finetune"] = finetune_task.outputs["metrics"]
    return results
