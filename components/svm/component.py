"""svm: VOC07 linear SVMs per class on frozen features, cost chosen by 3-fold cross-validation."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def svm(
    features: Input[Artifact],
    metrics: Output[Metrics],
    layers: list = ["res5avg"],  # noqa: B006 (KFP reads the default; it is never mutated)
    enabled: bool = True,
):
    """Run the VOC07 SVM benchmark (VISSL's protocol) on one or several feature layers.

    Adapter for ``sslcore.benchmarks.svm.run_svm_benchmark`` (classes trained in parallel on all
    the pod's cores).

    Args:
        features: directory of ``<split>_<layer>_{features,targets,inds}.npy`` (train and test),
            as written by extract_features; targets (N,) class ids or (N, C) VOC flags (1 present,
            -1 absent, 0 difficult).
        metrics: output directory holding ``metrics.json`` (``{"benchmark": "svm", "records":
            [{"name": "mAP", "value", "unit": "%", "layer", "params": {"costs", "cv_folds", ...}}]}``),
            ``per_class_ap.json`` (``{layer: {"classes", "ap" (%), "chosen_cost"}}``) and
            ``cv_ap.json`` (``{layer: {"costs", "cv_ap" [C][K] (%), "chosen_cost"}}``); each layer's
            mAP is also logged as a KFP metric ``mAP_<layer>``, e.g. ``mAP_res5avg``.
        layers: the feature layers to evaluate.
        enabled: False switches the benchmark off: ``metrics`` gets a ``metrics.json`` with no
            records (``sslcore.benchmarks.metrics.write_skipped``), which the report leaves out.
    """
    if not enabled:
        from sslcore.benchmarks.metrics import write_skipped

        write_skipped(metrics.path, "svm", "switched off by the pipeline (enabled=False)")
        return

    import json
    import os

    from sslcore.benchmarks.svm import run_svm_benchmark

    os.makedirs(metrics.path, exist_ok=True)
    result = run_svm_benchmark(features.path, metrics.path, layers=list(layers), n_jobs=-1)
    for record in result["records"]:
        metrics.log_metric(f"{record['name']}_{record['layer']}", float(record["value"]))
    print(json.dumps(result["records"], indent=2))
