"""low_shot: linear SVMs trained on k positives per class, several random samples per k."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def low_shot(
    features: Input[Artifact],
    metrics: Output[Metrics],
    layer: str = "res5avg",
    k_values: list = [1, 2, 4, 8, 16, 32, 64, 96],  # noqa: B006 (KFP reads the default)
    num_samples: int = 5,
    enabled: bool = True,
):
    """Run the low-shot SVM benchmark (VISSL's SVMLowShotTrainer protocol) on one feature layer.

    Adapter for ``sslcore.benchmarks.low_shot.run_low_shot_benchmark`` (seed 0; (k, sample)
    pairs trained in parallel on all the pod's cores).

    Args:
        features: directory of ``<split>_<layer>_{features,targets,inds}.npy`` (train and test),
            as written by extract_features; targets (N,) class ids or (N, C) VOC flags.
        metrics: output directory holding ``metrics.json`` (``{"benchmark": "low_shot", "records":
            [{"name": "mAP", "value", "unit": "%", "layer", "params": {"k", "num_samples", "stat",
            "cost", ...}}]}``, four records per k: stat mean/std/min/max), ``low_shot_samples.json``
            (the drawn train rows per k, sample and class) and ``low_shot_ap.json`` (test mAP per k,
            sample and cost); each record is also logged as a KFP metric ``mAP_k<k>_<stat>``, e.g.
            ``mAP_k8_mean``.
        layer: the feature layer to evaluate.
        k_values: positives per class.
        num_samples: independent samples per k.
        enabled: False switches the benchmark off: ``metrics`` gets a ``metrics.json`` with no
            records (``sslcore.benchmarks.metrics.write_skipped``), which the report leaves out.
    """
    if not enabled:
        from sslcore.benchmarks.metrics import write_skipped

        write_skipped(metrics.path, "low_shot", "switched off by the pipeline (enabled=False)")
        return

    import json
    import os

    from sslcore.benchmarks.low_shot import run_low_shot_benchmark

    os.makedirs(metrics.path, exist_ok=True)
    result = run_low_shot_benchmark(features.path, metrics.path, layer=layer, k_values=[int(k) for k in k_values],
                                    num_samples=num_samples, n_jobs=-1)
    for record in result["records"]:
        params = record["params"]
        metrics.log_metric(f"{record['name']}_k{params['k']}_{params['stat']}", float(record["value"]))
    print(json.dumps(result["records"], indent=2))
