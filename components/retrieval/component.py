"""retrieval: instance retrieval on Fashion-MNIST with GeM / R-MAC descriptors of a trunk layer."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def retrieval(
    dataset: Input[Dataset],
    metrics: Output[Metrics],
    checkpoint: Optional[Input[Model]] = None,
    descriptor: str = "gem",
    whiten: bool = False,
    layer: str = "res5",
    config: str = "feature_extraction/extract_resnet_fashion_mnist",
    num_queries: int = 500,
    num_database: int = 5000,
    num_whiten: int = 5000,
    seed: int = 0,
    enabled: bool = True,
):
    """Rank a train-split database for test-split queries and score the ranking (mAP, precision@k).

    Adapter for ``sslcore.benchmarks.retrieval.run_retrieval_benchmark``: descriptors from the
    spatial map of ``layer`` (GeM p=3 or R-MAC L=3), optional PCA whitening fitted on train images
    outside the database, revisited-style mAP with relevant = same class.

    Args:
        dataset: a prepared Fashion-MNIST directory in disk_filelist layout
            (``{train,test}_images.npy`` paths relative to it, ``{train,test}_labels.npy`` int64).
        metrics: output directory: ``metrics.json`` (``{"benchmark": "retrieval", "records":
            [{"name": "mAP" | "precision@1" | "precision@5" | "precision@10", "value", "unit": "%",
            "layer", "params": {"protocol", "descriptor", "whitening", "k", ...}}]}``),
            ``indices.json`` (chosen query / database / whitening rows), ``examples.json`` and
            ``thumbnails/*.png`` (a few queries with their top-5 matches, for the report). Each
            record is also a KFP metric named ``<protocol>_<name>`` with "@" written "_at_",
            e.g. ``class_mAP``, ``class_precision_at_1``.
        checkpoint: the pretrain output (directory with ``metadata["checkpoint_file"]``, default
            ``checkpoint.torch``); absent = the same trunk randomly initialised (the baseline).
        descriptor: "gem" or "rmac".
        whiten: fit PCA whitening on ``num_whiten`` train images outside the database.
        layer: the spatial trunk layer the descriptors pool ("res5", "res4", ...).
        config: the extraction recipe giving the trunk (must match the checkpoint) and the
            test-time transform.
        num_queries: class-stratified test images used as queries.
        num_database: class-stratified train images in the database.
        num_whiten: train images for whitening (used only with ``whiten``).
        seed: seed of the query / database / whitening draws.
        enabled: False switches the benchmark off: ``metrics`` gets a ``metrics.json`` with no
            records (``sslcore.benchmarks.metrics.write_skipped``), which the report leaves out.
    """
    if not enabled:
        from sslcore.benchmarks.metrics import write_skipped

        write_skipped(metrics.path, "retrieval", "switched off by the pipeline (enabled=False)")
        return

    import json
    import os

    from sslcore.benchmarks.retrieval import run_retrieval_benchmark

    weights = None
    if checkpoint is not None:
        weights = os.path.join(checkpoint.path, checkpoint.metadata.get("checkpoint_file", "checkpoint.torch"))
    os.makedirs(metrics.path, exist_ok=True)
    result = run_retrieval_benchmark(metrics.path, data_dir=dataset.path, checkpoint=weights, config=config,
                                     layer=layer, descriptor=descriptor, whiten=whiten,
                                     num_queries=num_queries, num_database=num_database,
                                     num_whiten=num_whiten, seed=seed)
    for record in result["records"]:
        name = f"{record['params']['protocol']}_{record['name']}".replace("@", "_at_")
        metrics.log_metric(name, float(record["value"]))
    print(json.dumps(result["records"], indent=2))
