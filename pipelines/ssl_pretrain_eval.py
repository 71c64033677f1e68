"""ssl_pretrain_eval: pretrain a trunk, then judge its features against two baselines.

    data_copy ─┬─ pretrain ── extract(checkpoint) ──┬─ knn ──────┐
               │                                    └─ linear ───┤
               ├─ extract(random_init) ─────────────┬─ knn ──────┤
               │                                    └─ linear ───┼─ report
               └─ extract(raw_pixels) ──────────────┬─ knn ──────┤
                                                    └─ linear ───┘

The random-init trunk and raw pixels are the floors a pretrained trunk must clear (design.md
section 8). The pipeline returns the report's JSON summary and HTML page, so a local run
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

PIPELINE_NAME = "ssl-pretrain-eval"

Outputs = NamedTuple("Outputs", [("summary", Artifact), ("report", HTML)])


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Self-supervised pretraining, then kNN and linear benchmarks of the pretrained "
                "trunk, a randomly initialised trunk and raw pixels, gathered in one HTML report.",
)
def ssl_pretrain_eval(
    dataset_source: str = "fashion_mnist",
    limit_train: int = 0,
    limit_test: int = 0,
    pretrain_config: str = DEFAULT_PRETRAIN_CONFIG,
    extract_config: str = DEFAULT_EXTRACT_CONFIG,
    extra_overrides: List[str] = [],
    linear_epochs: int = 0,
) -> Outputs:
    """Pretrain and evaluate.

    Args:
        dataset_source: a built-in set ("fashion_mnist") or a dataset directory.
        limit_train: class-stratified subset of the train split; 0 = all.
        limit_test: class-stratified subset of the test split; 0 = all.
        pretrain_config: the pretraining recipe (sslcore/config/<name>.yaml).
        extract_config: the feature extraction recipe: unaugmented transforms, and the same
            trunk as pretrain_config.
        extra_overrides: VISSL-style overrides for pretraining and trunk feature extraction
            alike, e.g. ["config.OPTIMIZER.num_epochs=1"]; trunk overrides thus reach both.
        linear_epochs: epochs of the linear benchmark; 0 = its default.
    """
    data = data_copy(source=dataset_source, limit_train=limit_train, limit_test=limit_test)
    data.set_display_name("data copy")
    dataset = data.outputs["dataset"]

    trained = pretrain(dataset=dataset, config=pretrain_config, overrides=extra_overrides)
    trained.set_display_name("pretrain")
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
        task.set_display_name(f"extract features ({model_name})")
        layer = "pixels" if model_name == "raw_pixels" else "res5avg"
        features = task.outputs["features"]
        knn_task = knn(features=features, layer=layer)
        knn_task.set_display_name(f"knn ({model_name})")
        linear_task = linear(features=features, layer=layer, epochs=linear_epochs)
        linear_task.set_display_name(f"linear ({model_name})")
        results[f"{model_name}_knn"] = knn_task.outputs["metrics"]
        results[f"{model_name}_linear"] = linear_task.outputs["metrics"]

    summary = report(checkpoint=checkpoint, **results)
    summary.set_display_name("report")
    return Outputs(summary=summary.outputs["summary"], report=summary.outputs["html"])
