"""report: one HTML page and one JSON summary for a pretrain + evaluate run."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Model, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def report(
    pretrained_knn: Input[Metrics],
    pretrained_linear: Input[Metrics],
    random_init_knn: Input[Metrics],
    random_init_linear: Input[Metrics],
    raw_pixels_knn: Input[Metrics],
    raw_pixels_linear: Input[Metrics],
    checkpoint: Input[Model],
    html: Output[HTML],
    summary: Output[Artifact],
    title: str = "sslcore: pretrain and evaluate",
):
    """Gather the six benchmark results and the training log into a report; print the table.

    Adapter for ``sslcore.report.write_html_report`` (the printed table comes from
    ``sslcore.report.format_metrics_table``).

    Args:
        pretrained_knn, pretrained_linear, random_init_knn, random_init_linear, raw_pixels_knn,
            raw_pixels_linear: benchmark outputs, each a directory holding ``metrics.json``.
        checkpoint: the pretrain output directory; its ``stdout.json`` (training log, JSON lines)
            and ``train_config.yaml`` (resolved config) go into the report when present.
        html: output file: the self-contained HTML report (rendered by the KFP UI).
        summary: output directory holding ``summary.json``: ``{"title", "table" (the printed
            text table), "rows": [<metrics.json dict> + {"model": "pretrained" | "random init" |
            "raw pixels"}, ...], "checkpoint_file"}``.
        title: the report's title.
    """
    import json
    import os

    from sslcore.report import format_metrics_table, write_html_report

    inputs = [("pretrained", pretrained_knn), ("pretrained", pretrained_linear),
              ("random init", random_init_knn), ("random init", random_init_linear),
              ("raw pixels", raw_pixels_knn), ("raw pixels", raw_pixels_linear)]
    rows = []
    for model_name, artifact in inputs:
        with open(os.path.join(artifact.path, "metrics.json")) as fh:
            rows.append({**json.load(fh), "model": model_name})
    table = format_metrics_table(rows)
    print(table)

    train_log = os.path.join(checkpoint.path, "stdout.json")
    config_path = os.path.join(checkpoint.path, "train_config.yaml")
    config_yaml = None
    if os.path.isfile(config_path):
        with open(config_path) as fh:
            config_yaml = fh.read()
    notes = ("pretrained: the trunk after self-supervised pretraining; random init: the same trunk "
             "with random weights; raw pixels: the flattened images. Features are frozen; kNN and "
             "linear classifiers are fit on the train split and measured on the test split.")
    write_html_report(html.path, title=title, metrics=rows,
                      train_log=train_log if os.path.isfile(train_log) else None,
                      config_yaml=config_yaml, notes=notes)

    os.makedirs(summary.path, exist_ok=True)
    with open(os.path.join(summary.path, "summary.json"), "w") as fh:
        json.dump({"title": title, "table": table, "rows": rows,
                   "checkpoint_file": checkpoint.metadata.get("checkpoint_file")}, fh, indent=2)
    print(f"HTML report: {html.path}")
