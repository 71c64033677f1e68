"""extract_features: frozen-trunk (or raw-pixel) features of the train and test splits."""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def extract_features(
    source: str,
    dataset: Input[Dataset],
    features: Output[Artifact],
    config: str = "",
    overrides: Optional[List[str]] = None,
    checkpoint: Optional[Input[Model]] = None,
    checkpoint_uri: str = "",
):
    """Write the features a benchmark reads, from one of three models.

    Adapter for ``sslcore.engine.launcher.run_engine(..., engine_name="extract_features")``
    (``source`` "checkpoint" or "random_init") or
    ``sslcore.engine.extract.extract_raw_pixel_features`` (``source`` "raw_pixels").

    Args:
        source: "checkpoint" (the trunk of ``checkpoint``), "random_init" (the same trunk, randomly
            initialised with the recipe's seed: the floor a pretrained trunk must beat) or
            "raw_pixels" (flattened images, layer ``pixels``: the dataset's published baseline).
        dataset: directory in disk_filelist layout (``{train,test}_{images,labels}.npy``).
        features: output directory: ``<split>_<layer>_features.npy`` (float32, N x D),
            ``<split>_<layer>_targets.npy`` (int64, N) and ``<split>_<layer>_inds.npy`` (int64, N)
            for split ``train`` and ``test``. Metadata: ``source`` and ``layers``.
        config: the extraction recipe, e.g. ``feature_extraction/extract_resnet_fashion_mnist``:
            unaugmented transforms for both splits and the trunk of the pretraining recipe (its
            MODEL.TRUNK must match the checkpoint's); unused for "raw_pixels".
        overrides: more VISSL-style overrides (the trunk overrides pretraining got, so the trunk
            still matches); the data paths, weights and eval settings are set here and win.
        checkpoint: the pretrain output (directory with ``metadata["checkpoint_file"]``).
        checkpoint_uri: instead of ``checkpoint``, an existing checkpoint file: ``s3://`` URI or
            path (the ssl_benchmark pipeline). "checkpoint" needs exactly one of the two; the
            other sources take neither.

    Raises:
        ValueError: unknown ``source``, a missing ``config``, or ``checkpoint``/``checkpoint_uri``
            not given exactly once for "checkpoint" (or given with another source).
        StorageError: ``checkpoint_uri`` cannot be read from object storage.
    """
    import glob
    import os

    sources = ("checkpoint", "random_init", "raw_pixels")
    if source not in sources:
        raise ValueError(f"source={source!r} is unknown; use one of {', '.join(sources)}")
    given = (checkpoint is not None) + bool(checkpoint_uri)
    if given != (1 if source == "checkpoint" else 0):
        raise ValueError("pass the pretrain Model artifact as `checkpoint`, or a checkpoint file "
                         "as `checkpoint_uri`, when (and only when) source='checkpoint'; got "
                         f"source={source!r}, checkpoint="
                         f"{'set' if checkpoint is not None else 'absent'}, "
                         f"checkpoint_uri={checkpoint_uri!r}")
    os.makedirs(features.path, exist_ok=True)
    if source == "raw_pixels":
        from sslcore.engine.extract import extract_raw_pixel_features

        extract_raw_pixel_features(dataset.path, features.path)
    else:
        from sslcore.engine.launcher import run_engine

        if not config:
            raise ValueError(f"source={source!r} needs `config`, the feature extraction recipe")
        weights = checkpoint_uri
        if checkpoint is not None:
            name = checkpoint.metadata.get("checkpoint_file", "checkpoint.torch")
            weights = os.path.join(checkpoint.path, name)
        split_overrides = []
        for split in ("TRAIN", "TEST"):
            prefix = os.path.join(dataset.path, split.lower())
            split_overrides += [f"config.DATA.{split}.DATA_SOURCES=[disk_filelist]",
                                f"config.DATA.{split}.DATA_PATHS=[{prefix}_images.npy]",
                                f"config.DATA.{split}.LABEL_SOURCES=[disk_filelist]",
                                f"config.DATA.{split}.LABEL_PATHS=[{prefix}_labels.npy]"]
        run_engine(
            [f"config={config}", *(overrides or []), *split_overrides,
             "config.MODEL.FEATURE_EVAL_SETTINGS.EVAL_MODE_ON=true",
             "config.MODEL.FEATURE_EVAL_SETTINGS.EXTRACT_TRUNK_FEATURES_ONLY=true",
             f"config.MODEL.WEIGHTS_INIT.PARAMS_FILE={weights}",
             f"config.EXTRACT_FEATURES.OUTPUT_DIR={features.path}",
             f"config.CHECKPOINT.DIR={features.path}"],
            engine_name="extract_features",
        )
    suffix = "_features.npy"
    layers = sorted({os.path.basename(p)[len("train_"):-len(suffix)]
                     for p in glob.glob(os.path.join(features.path, f"train_*{suffix}"))})
    features.metadata["source"] = source
    features.metadata["layers"] = layers
    print(f"{source} features, layers {layers}, in {features.path}")
