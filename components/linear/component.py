"""linear: a linear classifier (BN -> FC, VISSL's eval_mlp) trained on frozen features."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def linear(
    features: Input[Artifact],
    metrics: Output[Metrics],
    layer: str = "res5avg",
    epochs: int = 0,
):
    """Run the linear benchmark: train on the train split's features, measure on the test split.

    Adapter for ``sslcore.benchmarks.linear.run_linear_benchmark``.

    Args:
        features: directory of ``<split>_<layer>_{features,targets,inds}.npy`` (train and test),
            as written by extract_features.
        metrics: output directory holding ``metrics.json`` (``{"benchmark": "linear", "records":
            [{"name", "value", "unit", "layer", "params": {"epochs", "lr", ...}}, ...]}``); each
            record is also logged as a KFP metric named after it (``top1``, ``top5``).
        layer: the feature layer to evaluate (``res5avg`` for trunks, ``pixels`` for raw pixels).
        epochs: training epochs; 0 = the benchmark's default.
    """
    import json
    import os

    from sslcore.benchmarks.linear import run_linear_benchmark

    os.makedirs(metrics.path, exist_ok=True)
    options = {"epochs": epochs} if epochs > 0 else {}
    result = run_linear_benchmark(features.path, metrics.path, layer=layer, **options)
    for record in result["records"]:
        metrics.log_metric(record["name"], float(record["value"]))
    print(json.dumps(result["records"], indent=2))
