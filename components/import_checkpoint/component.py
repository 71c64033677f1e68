"""import_checkpoint: bring an existing checkpoint (s3:// or a path) into the pipeline as a Model."""

from kfp import dsl
from kfp.dsl import Model, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def import_checkpoint(checkpoint_uri: str, model: Output[Model]):
    """Copy a checkpoint and its run's log and config into a Model artifact.

    Adapter for ``sslcore.engine.remote.fetch_run``. The benchmark, ClusterFit and convert
    pipelines start from a checkpoint trained elsewhere; after this step every stage reads it the
    way it reads the pretrain component's output.

    Args:
        checkpoint_uri: the checkpoint file: ``s3://bucket/runs/<run>/<file>.torch`` (the object
            store's endpoint and keys come from the ``sslcore-s3`` Secret's environment) or a path
            in the pod (e.g. on the dataset PVC). ``stdout.json`` and ``train_config.yaml`` are
            copied too when they sit beside it.
        model: output directory holding the checkpoint (torch.load with weights_only=True) and the
            companions found; metadata ``checkpoint_file`` names the checkpoint and
            ``checkpoint_uri`` where it came from.

    Raises:
        ValueError: ``checkpoint_uri`` is empty.
        FileNotFoundError: the checkpoint does not exist.
        StorageError: the object store cannot be read.
    """
    import os

    from sslcore.engine.remote import fetch_run

    if not checkpoint_uri:
        raise ValueError("checkpoint_uri is empty: give the checkpoint to import, e.g. "
                         "s3://sslcore/runs/<run>/model_final_checkpoint_phase99.torch")
    os.makedirs(model.path, exist_ok=True)
    written = fetch_run(checkpoint_uri, model.path)
    model.metadata["checkpoint_file"] = os.path.basename(str(written[0]))
    model.metadata["checkpoint_uri"] = checkpoint_uri
    model.metadata["framework"] = "pytorch"
    print("imported: " + ", ".join(os.path.basename(str(p)) for p in written))
