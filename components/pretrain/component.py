"""pretrain: self-supervised pretraining of a trunk: in-pod on one node, a PyTorchJob on several."""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def pretrain(
    dataset: Input[Dataset],
    config: str,
    model: Output[Model],
    overrides: Optional[List[str]] = None,
    num_nodes: int = 1,
    gpus_per_node: int = 0,
    checkpoint_uri: str = "",
    dataset_pvc: str = "",
    dataset_mount: str = "/datasets",
    image: str = "",
    namespace: str = "",
    job_timeout_s: int = 604800,
    job_poll_s: float = 10.0,
    labels: Optional[Input[Artifact]] = None,
):
    """Run the ``train`` engine with a VISSL recipe on the dataset; the checkpoint dir is output.

    Adapter for ``sslcore.engine.launcher.run_engine(..., engine_name="train")`` (one node, in
    this pod) or ``sslcore.k8s.stage.pretrain_on_cluster`` (``num_nodes`` > 1: a PyTorchJob with
    a Master and ``num_nodes - 1`` Workers, followed until Succeeded or Failed, then deleted).

    Args:
        dataset: directory in disk_filelist layout (``{train,test}_{images,labels}.npy``), as
            written by data_copy.
        config: the recipe, e.g. ``pretrain/simclr/simclr_fashion_mnist_cpu``
            (``sslcore/config/<name>.yaml`` or a path).
        model: output directory: the final VISSL-format checkpoint (metadata ``checkpoint_file``
            names it; torch.load with weights_only=True), ``train_config.yaml`` (the resolved
            config) and ``stdout.json`` (JSON lines: iteration, phase_idx, loss, lr,
            images_per_sec, ...). In-pod without ``checkpoint_uri`` it is CHECKPOINT.DIR itself.
        overrides: more VISSL-style overrides (``config.OPTIMIZER.num_epochs=1``), applied after
            the recipe; the data paths and CHECKPOINT.DIR are set here and win.
        num_nodes: machines; > 1 runs a PyTorchJob (needs ``checkpoint_uri`` and ``dataset_pvc``).
        gpus_per_node: GPUs (= processes) per PyTorchJob pod; 0: one CPU process per pod.
        checkpoint_uri: ``s3://`` run directory for the checkpoints (CHECKPOINT.DIR): a restarted
            pod or job resumes from its ``checkpoint.latest``; metadata ``checkpoint_uri`` then
            names the final checkpoint there. Empty: checkpoints stay in ``model``.
        dataset_pvc: PersistentVolumeClaim shared with the PyTorchJob, mounted read-write in this
            pod at ``dataset_mount`` (kfp-kubernetes mount_pvc); the dataset is copied there.
        dataset_mount: where ``dataset_pvc`` is mounted, in this pod and in the job's pods.
        image: the job's image; empty: the image of this component.
        namespace: the job's namespace; empty: this pod's.
        job_timeout_s: seconds to wait for the PyTorchJob (default one week).
        job_poll_s: seconds between two reads of the job's status.
        labels: train labels that replace the dataset's, e.g. ClusterFit step 1's output (the
            clusterfit component): a directory holding exactly one ``*_train_*_lbls.npy`` (int64
            (N,), row i labels image i of the train split). Step 2 trains on these.

    Raises:
        ValueError: ``num_nodes`` > 1 without ``checkpoint_uri`` (s3://) or ``dataset_pvc``;
            ``labels`` without exactly one train labels file.
        RuntimeError: the PyTorchJob failed; the message is the job's.
        TimeoutError: the PyTorchJob ran past ``job_timeout_s``.
    """
    import glob
    import os
    import shutil

    from sslcore.engine.launcher import run_engine
    from sslcore.storage import is_remote

    os.makedirs(model.path, exist_ok=True)
    data_dir = dataset.path
    job = None
    if num_nodes > 1:
        from sslcore.k8s.stage import job_name, stage_dataset

        if not dataset_pvc:
            raise ValueError("num_nodes > 1 needs dataset_pvc: the PyTorchJob's pods read the "
                             "dataset from a shared PersistentVolumeClaim (manifests/base/datasets)")
        job = job_name()
        data_dir = str(stage_dataset(dataset.path, os.path.join(dataset_mount, job)))
    train = os.path.join(data_dir, "train")
    label_file = f"{train}_labels.npy"
    if labels is not None:
        found = sorted(glob.glob(os.path.join(labels.path, "*_train_*_lbls.npy")))
        if len(found) != 1:
            raise ValueError(f"labels: expected one *_train_*_lbls.npy in {labels.path}, found "
                             f"{[os.path.basename(f) for f in found]}; pass the clusterfit "
                             "component's labels output")
        label_file = found[0]
        if job is not None:  # the job's pods read it from the shared PVC, beside the images
            label_file = os.path.join(data_dir, os.path.basename(found[0]))
            shutil.copyfile(found[0], label_file)
    args = [f"config={config}", *(overrides or []),
            "config.DATA.TRAIN.DATA_SOURCES=[disk_filelist]",
            f"config.DATA.TRAIN.DATA_PATHS=[{train}_images.npy]",
            "config.DATA.TRAIN.LABEL_SOURCES=[disk_filelist]",
            f"config.DATA.TRAIN.LABEL_PATHS=[{label_file}]"]
    if job is not None:
        from components import SSLCORE_IMAGE as default_image
        from sslcore.k8s.stage import pretrain_on_cluster

        final = pretrain_on_cluster(args, checkpoint_uri=checkpoint_uri, nodes=num_nodes,
                                    gpus_per_node=gpus_per_node, image=image or default_image,
                                    dataset_pvc=dataset_pvc, dataset_mount=dataset_mount,
                                    namespace=namespace or None, timeout_s=job_timeout_s,
                                    poll_s=job_poll_s, name=job)
    else:
        final = run_engine([*args, f"config.CHECKPOINT.DIR={checkpoint_uri or model.path}"],
                           engine_name="train")
    final = str(final)
    if is_remote(final):
        from sslcore.engine.remote import fetch_run

        fetch_run(final, model.path)
        model.metadata["checkpoint_uri"] = final
    model.metadata["checkpoint_file"] = os.path.basename(final)
    model.metadata["config"] = config
    model.metadata["framework"] = "pytorch"
    print(f"final checkpoint: {final}")
