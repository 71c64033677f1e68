"""report: one HTML page and one JSON summary for a pretrain + evaluate (or benchmark) run."""

from typing import Optional

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Model, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def report(
    pretrained_knn: Input[Metrics],
    pretrained_linear: Input[Metrics],
    html: Output[HTML],
    summary: Output[Artifact],
    random_init_knn: Optional[Input[Metrics]] = None,
    random_init_linear: Optional[Input[Metrics]] = None,
    raw_pixels_knn: Optional[Input[Metrics]] = None,
    raw_pixels_linear: Optional[Input[Metrics]] = None,
    pretrained_svm: Optional[Input[Metrics]] = None,
    random_init_svm: Optional[Input[Metrics]] = None,
    pretrained_low_shot: Optional[Input[Metrics]] = None,
    random_init_low_shot: Optional[Input[Metrics]] = None,
    pretrained_detection: Optional[Input[Metrics]] = None,
    random_init_detection: Optional[Input[Metrics]] = None,
    pretrained_retrieval: Optional[Input[Metrics]] = None,
    random_init_retrieval: Optional[Input[Metrics]] = None,
    pretrained_linear_eval: Optional[Input[Metrics]] = None,
    pretrained_finetune: Optional[Input[Metrics]] = None,
    pretrained_clusterfit: Optional[Input[Metrics]] = None,
    checkpoint: Optional[Input[Model]] = None,
    title: str = "sslcore: pretrain and evaluate",
    checkpoint_uri: str = "",
    results_uri: str = "",
):
    """Gather the benchmark results and the training log into a report; print the table.

    Adapter for ``sslcore.report.write_html_report`` (the printed table comes from
    ``sslcore.report.format_metrics_table``); ``summary.json`` is also written to
    ``results_uri`` through ``sslcore.storage`` when given (CI reads it from there).

    Args:
        pretrained_knn, pretrained_linear: the pretrained trunk's benchmark outputs, each a
            directory holding ``metrics.json``.
        html: output file: the self-contained HTML report (rendered by the KFP UI).
        summary: output directory holding ``summary.json``: ``{"title", "table" (the printed
            text table), "rows": [<metrics.json dict> + {"model": "pretrained" | "random init" |
            "raw pixels"}, ...], "checkpoint_file", "checkpoint_uri"}``.
        random_init_knn, random_init_linear, raw_pixels_knn, raw_pixels_linear: the baselines'
            outputs, when the pipeline ran them.
        pretrained_svm ... pretrained_clusterfit: the other benchmarks' outputs (VOC07 SVM,
            low-shot SVM, detection, retrieval, linear through the trunk, finetuning, ClusterFit
            labels), each a directory with ``metrics.json`` and the files its details section
            shows. A benchmark the pipeline disabled has no records and is left out.
        checkpoint: the pretrain output directory; its ``stdout.json`` (training log, JSON lines)
            and ``train_config.yaml`` (resolved config) go into the report when present.
        title: the report's title.
        checkpoint_uri: the evaluated checkpoint when it came from outside the pipeline.
        results_uri: a directory or ``s3://`` prefix; ``<results_uri>/summary.json`` is written.

    Raises:
        StorageError: ``results_uri`` cannot be written.
    """
    import json
    import os

    from sslcore.report import format_metrics_table, write_html_report
    from sslcore.storage import join_uri, write_bytes

    inputs = [("pretrained", pretrained_knn), ("pretrained", pretrained_linear),
              ("random init", random_init_knn), ("random init", random_init_linear),
              ("raw pixels", raw_pixels_knn), ("raw pixels", raw_pixels_linear),
              ("pretrained", pretrained_svm), ("random init", random_init_svm),
              ("pretrained", pretrained_low_shot), ("random init", random_init_low_shot),
              ("pretrained", pretrained_detection), ("random init", random_init_detection),
              ("pretrained", pretrained_retrieval), ("random init", random_init_retrieval),
              ("pretrained", pretrained_linear_eval), ("pretrained", pretrained_finetune),
              ("pretrained", pretrained_clusterfit)]
    rows, result_dirs = [], []
    for model_name, artifact in inputs:
        if artifact is None:
            continue
        with open(os.path.join(artifact.path, "metrics.json")) as fh:
            metrics = json.load(fh)
        if not metrics.get("records"):  # a benchmark the pipeline switched off
            continue
        rows.append({**metrics, "model": model_name})
        result_dirs.append((model_name, metrics["benchmark"], artifact.path))
    table = format_metrics_table(rows)
    print(table)

    train_log, config_yaml = None, None
    if checkpoint is not None:
        log_path = os.path.join(checkpoint.path, "stdout.json")
        train_log = log_path if os.path.isfile(log_path) else None
        config_path = os.path.join(checkpoint.path, "train_config.yaml")
        if os.path.isfile(config_path):
            with open(config_path) as fh:
                config_yaml = fh.read()
    baselines = any(row["model"] != "pretrained" for row in rows)
    notes = ("pretrained: the trunk after self-supervised pretraining"
             + ("; random init: the same trunk with random weights; raw pixels: the flattened "
                "images" if baselines else "")
             + ". kNN, linear and SVM classifiers are fit on frozen features of the train split "
             "and measured on the test split; each row names its protocol parameters.")
    write_html_report(html.path, title=title, metrics=rows, train_log=train_log,
                      config_yaml=config_yaml, notes=notes, result_dirs=result_dirs)

    checkpoint_file = checkpoint.metadata.get("checkpoint_file") if checkpoint is not None else None
    document = {"title": title, "table": table, "rows": rows,
                "checkpoint_file": checkpoint_file or os.path.basename(checkpoint_uri) or None,
                "checkpoint_uri": (checkpoint.metadata.get("checkpoint_uri") if checkpoint
                                   is not None else None) or checkpoint_uri or None}
    text = json.dumps(document, indent=2)
    os.makedirs(summary.path, exist_ok=True)
    with open(os.path.join(summary.path, "summary.json"), "w") as fh:
        fh.write(text)
    if results_uri:
        target = join_uri(results_uri, "summary.json")
        write_bytes(target, text.encode("utf-8"))
        print(f"summary: {target}")
    print(f"HTML report: {html.path}")
