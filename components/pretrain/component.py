"""pretrain: self-supervised pretraining of a trunk on the dataset artifact (in-pod, one node)."""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def pretrain(
    dataset: Input[Dataset],
    config: str,
    model: Output[Model],
    overrides: Optional[List[str]] = None,
):
    """Run the ``train`` engine with a VISSL recipe on the dataset; the checkpoint dir is output.

    Adapter for ``sslcore.engine.launcher.run_engine(..., engine_name="train")``.

    Args:
        dataset: directory in disk_filelist layout (``{train,test}_{images,labels}.npy``), as
            written by data_copy.
        config: the recipe, e.g. ``pretrain/simclr/simclr_fashion_mnist_cpu``
            (``sslcore/config/<name>.yaml`` or a path).
        model: output directory = CHECKPOINT.DIR: the VISSL-format checkpoints
            (``model_final_checkpoint_phase<N>.torch`` and the others, torch.load with
            weights_only=True), ``train_config.yaml`` (the resolved config) and ``stdout.json``
            (JSON lines: iteration, phase_idx, loss, lr, images_per_sec, ...). Metadata
            ``checkpoint_file`` names the final checkpoint, relative to the directory.
        overrides: more VISSL-style overrides (``config.OPTIMIZER.num_epochs=1``), applied after
            the recipe; the data paths and CHECKPOINT.DIR are set here and win.
    """
    import os

    from sslcore.engine.launcher import run_engine

    os.makedirs(model.path, exist_ok=True)
    train = os.path.join(dataset.path, "train")
    final = run_engine(
        [f"config={config}", *(overrides or []),
         "config.DATA.TRAIN.DATA_SOURCES=[disk_filelist]",
         f"config.DATA.TRAIN.DATA_PATHS=[{train}_images.npy]",
         "config.DATA.TRAIN.LABEL_SOURCES=[disk_filelist]",
         f"config.DATA.TRAIN.LABEL_PATHS=[{train}_labels.npy]",
         f"config.CHECKPOINT.DIR={model.path}"],
        engine_name="train",
    )
    model.metadata["checkpoint_file"] = os.path.basename(final)
    model.metadata["config"] = config
    model.metadata["framework"] = "pytorch"
    print(f"final checkpoint: {final}")
