"""detection: Faster R-CNN on the converted trunk (or random init), VOC AP50 and COCO mAP."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def detection(
    dataset: Input[Dataset],
    metrics: Output[Metrics],
    checkpoint: Optional[Input[Model]] = None,
    iterations: int = 300,
    batch_size: int = 8,
    lr: float = 0.02,
    num_train: int = 0,
    num_test: int = 0,
    seed: int = 0,
    enabled: bool = True,
):
    """Train Faster R-CNN (FPN) from the trunk on a VOC2007-layout set and score its test split.

    Adapter for ``sslcore.benchmarks.detection.run_detection_benchmark``: the trunk is converted to
    a torchvision ResNet (strict load), fine-tuned end to end with trained BatchNorm (MoCo's
    detection protocol), SGD with warmup and step decay; VOC07 11-point AP50 and pycocotools
    COCO mAP@[.5:.95].

    Args:
        dataset: the Fashion-MNIST scenes directory (or any VOC2007 layout): ``VOC2007/``
            with ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg`` and
            ``ImageSets/Main/{trainval,test}.txt``; the directory itself may be the VOC root.
        metrics: output directory: ``metrics.json`` (``{"benchmark": "detection", "records":
            [{"name": "AP50" | "mAP" | "AP75", "value", "unit": "%", "layer": "fpn(res3,res4,res5)",
            "params": {"init", "iterations", "batch_size", "lr", "lr_schedule", "min_size",
            "backbone", ...}}], "classes", "sizes", "coco", "seconds_per_iteration", ...}``),
            ``per_class_ap50.json`` (class name -> AP50 in %), ``examples.json`` (a few test
            images as base64 PNG with predicted boxes scoring >= 0.5 and the true boxes, for the
            report) and ``train_log.json`` (losses and lr every 10 iterations). Each record is also
            a KFP metric named ``<init>_<name>``, e.g. ``pretrained_AP50``, ``random_mAP``.
        checkpoint: the pretrain output (directory with ``metadata["checkpoint_file"]``, default
            ``checkpoint.torch``); absent = the same schedule from a randomly initialised trunk
            (the baseline; thin ResNet-18 x0.125, small stem).
        iterations: SGD updates.
        batch_size: images per update.
        lr: base learning rate.
        num_train: use only the first N trainval images (0 = all).
        num_test: evaluate only the first N test images (0 = all).
        seed: seeds the head initialisation, batch order and flips.
        enabled: False switches the benchmark off: ``metrics`` gets a ``metrics.json`` with no
            records (``sslcore.benchmarks.metrics.write_skipped``), which the report leaves out.
    """
    if not enabled:
        from sslcore.benchmarks.metrics import write_skipped

        write_skipped(metrics.path, "detection", "switched off by the pipeline (enabled=False)")
        return

    import json
    import os

    from sslcore.benchmarks.detection import run_detection_benchmark

    weights = None
    if checkpoint is not None:
        weights = os.path.join(checkpoint.path, checkpoint.metadata.get("checkpoint_file", "checkpoint.torch"))
    os.makedirs(metrics.path, exist_ok=True)
    result = run_detection_benchmark(dataset.path, metrics.path, checkpoint=weights, iterations=iterations,
                                     batch_size=batch_size, lr=lr, num_train=num_train or None,
                                     num_test=num_test or None, seed=seed)
    for record in result["records"]:
        metrics.log_metric(f"{record['params']['init']}_{record['name']}", float(record["value"]))
    print(json.dumps(result["records"], indent=2))
