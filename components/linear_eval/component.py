"""linear_eval: widened linear probes on several frozen-trunk layers, trained through the trunk."""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def linear_eval(
    dataset: Input[Dataset],
    metrics: Output[Metrics],
    checkpoint: Optional[Input[Model]] = None,
    epochs: int = 0,
    recipe: str = "",
    overrides: Optional[List[str]] = None,
    seed: int = 0,
    enabled: bool = True,
):
    """Train eval_mlp heads on res2 ... res5avg of the frozen trunk on augmented images; test them.

    Adapter for ``sslcore.benchmarks.finetune.run_finetune_benchmark(mode="linear")``.

    Args:
        dataset: directory in disk_filelist layout (``{train,test}_{images,labels}.npy``).
        metrics: output directory: ``metrics.json`` (``{"benchmark": "linear_eval", "records":
            [{"name": "top1"|"top5", "value": %, "unit": "%", "layer": "res2"|...|"res5avg",
            "params": {"epochs", "lr", "schedule", "batch_size", "pool_ops", ...}}], "history":
            [...]}``), ``meters.json`` (JSON lines: train/test accuracy per epoch) and ``run/``
            (the engine's log and resolved config). Each record is also a KFP metric
            ``<layer>_<name>``.
        checkpoint: the pretrain output (directory with ``metadata["checkpoint_file"]``); absent:
            a randomly initialised trunk (the baseline).
        epochs: training epochs; 0 = the recipe's.
        recipe: config name; "" = the Fashion-MNIST widened linear recipe
            (``benchmark/linear_image_classification/fashion_mnist/eval_resnet_fashion_mnist_linear``).
        overrides: more VISSL-style overrides, applied last (e.g. DATA_LIMIT for a quick run).
        seed: SEED_VALUE of the run.
        enabled: False switches the benchmark off: ``metrics`` gets a ``metrics.json`` with no
            records (``sslcore.benchmarks.metrics.write_skipped``), which the report leaves out.
    """
    if not enabled:
        from sslcore.benchmarks.metrics import write_skipped

        write_skipped(metrics.path, "linear_eval", "switched off by the pipeline (enabled=False)")
        return

    import json
    import os

    from sslcore.benchmarks.finetune import run_finetune_benchmark

    weights = None
    if checkpoint is not None:
        weights = os.path.join(checkpoint.path, checkpoint.metadata.get("checkpoint_file",
                                                                        "checkpoint.torch"))
    os.makedirs(metrics.path, exist_ok=True)
    result = run_finetune_benchmark(dataset.path, metrics.path, checkpoint=weights, mode="linear",
                                    epochs=epochs or None, extra_overrides=list(overrides or []),
                                    seed=seed, recipe=recipe or None, keep_checkpoints=False)
    for record in result["records"]:
        metrics.log_metric(f"{record['layer']}_{record['name']}", float(record["value"]))
    print(json.dumps(result["records"], indent=2))
