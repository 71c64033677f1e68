"""knn: weighted kNN classification of the test split by the train split's features."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def knn(
    features: Input[Artifact],
    metrics: Output[Metrics],
    layer: str = "res5avg",
):
    """Run the kNN benchmark (VISSL's TOPK=200, T=0.1 and DINO's k=20, T=0.07).

    Adapter for ``sslcore.benchmarks.knn.run_knn_benchmark``.

    Args:
        features: directory of ``<split>_<layer>_{features,targets,inds}.npy`` (train and test),
            as written by extract_features.
        metrics: output directory holding ``metrics.json`` (``{"benchmark": "knn", "records":
            [{"name", "value", "unit", "layer", "params": {"k", "T", ...}}, ...]}``); each record
            is also logged as a KFP metric named ``<name>_k<k>_T<T>``, e.g. ``top1_k200_T0.1``.
        layer: the feature layer to evaluate (``res5avg`` for trunks, ``pixels`` for raw pixels).
    """
    import json
    import os

    from sslcore.benchmarks.knn import run_knn_benchmark

    os.makedirs(metrics.path, exist_ok=True)
    result = run_knn_benchmark(features.path, metrics.path, layer=layer)
    for record in result["records"]:
        params = record["params"]
        name = f"{record['name']}_k{params['k']}_T{params['T']}"
        metrics.log_metric(name, float(record["value"]))
    print(json.dumps(result["records"], indent=2))
