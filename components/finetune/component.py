"""finetune: full or semi-supervised fine-tuning of trunk and head from pretrained weights."""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def finetune(
    dataset: Input[Dataset],
    metrics: Output[Metrics],
    checkpoint: Optional[Input[Model]] = None,
    mode: str = "fulltune",
    fraction: float = 0.0,
    epochs: int = 0,
    recipe: str = "",
    overrides: Optional[List[str]] = None,
    seed: int = 0,
    enabled: bool = True,
):
    """Fine-tune the whole network (trunk and head on separate learning rates) and test it.

    Adapter for ``sslcore.benchmarks.finetune.run_finetune_benchmark``.

    Args:
        dataset: directory in disk_filelist layout (``{train,test}_{images,labels}.npy``).
        metrics: output directory: ``metrics.json`` (``{"benchmark": "finetune", "records":
            [{"name": "top1"|"top5", "value": %, "unit": "%", "layer": "res5avg", "params":
            {"epochs", "lr", "head_lr", "schedule", "batch_size", "mode", "fraction", ...}}],
            "history": [...]}``), ``meters.json`` (JSON lines: train/test accuracy per epoch),
            ``run/`` (the engine's log and resolved config) and, with a fraction, ``subset/``
            (the seeded subset in disk_filelist layout with ``subset.json``). Each record is also
            a KFP metric ``<layer>_<name>``.
        checkpoint: the pretrain output (directory with ``metadata["checkpoint_file"]``); absent:
            training from scratch (the baseline).
        mode: ``"fulltune"`` (all labels) or ``"semi_supervised"`` (a per-class fraction).
        fraction: share of each class's training labels in (0, 1]; 0 = all labels for fulltune,
            0.01 for semi_supervised.
        epochs: training epochs; 0 = the recipe's.
        recipe: config name; "" = the mode's Fashion-MNIST recipe under ``benchmark/fulltune`` or
            ``benchmark/semi_supervised``.
        overrides: more VISSL-style overrides, applied last.
        seed: SEED_VALUE of the run and the subset's seed.
        enabled: False switches the benchmark off: ``metrics`` gets a ``metrics.json`` with no
            records (``sslcore.benchmarks.metrics.write_skipped``), which the report leaves out.
    """
    if not enabled:
        from sslcore.benchmarks.metrics import write_skipped

        write_skipped(metrics.path, "finetune", "switched off by the pipeline (enabled=False)")
        return

    import json
    import os

    from sslcore.benchmarks.finetune import run_finetune_benchmark

    weights = None
    if checkpoint is not None:
        weights = os.path.join(checkpoint.path, checkpoint.metadata.get("checkpoint_file",
                                                                        "checkpoint.torch"))
    os.makedirs(metrics.path, exist_ok=True)
    result = run_finetune_benchmark(dataset.path, metrics.path, checkpoint=weights, mode=mode,
                                    fraction=fraction or None, epochs=epochs or None,
                                    extra_overrides=list(overrides or []), seed=seed,
                                    recipe=recipe or None, keep_checkpoints=False)
    for record in result["records"]:
        metrics.log_metric(f"{record['layer']}_{record['name']}", float(record["value"]))
    print(json.dumps(result["records"], indent=2))
