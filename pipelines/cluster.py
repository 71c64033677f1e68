"""Cluster settings shared by the pipelines, applied with kfp-kubernetes.

Each setting is a pipeline parameter, so it is chosen when a run starts (KFP UI or
``sslcore pipelines submit --param``), not when the pipeline is compiled:

- ``node_selector`` (dict) and ``tolerations`` (list of Kubernetes toleration dicts) on every
  task, to put the pods on the right node pool;
- ``pod_gpus`` with ``gpu_type``: the accelerator limit of the pods that train or extract in-pod
  (multi-node pretraining asks for its GPUs in the PyTorchJob instead);
- ``dataset_pvc``: the PersistentVolumeClaim with the datasets (manifests/base/dataset-pvc),
  mounted at :data:`DATASET_MOUNT` where data is read and where a PyTorchJob's copy is staged;
- the ``sslcore-s3`` Secret (manifests/base/minio) as environment of every task, so each stage
  reads and writes ``s3://`` through ``sslcore.storage``.

Pipelines store their artifacts under :data:`PIPELINE_ROOT` (the ``sslcore`` bucket), so the MinIO
console shows every artifact of a run; the kfp-launcher ConfigMap (manifests/base/kfp-launcher)
gives KFP the endpoint and credentials. ``kfp.local`` ignores all of this and runs on the laptop.
"""

from typing import Any, Optional

from kfp import kubernetes

PIPELINE_ROOT = "s3://sslcore/pipeline-root"
DATASET_MOUNT = "/datasets"
S3_SECRET = "sslcore-s3"
# keys of the Secret; the variable names are those sslcore.storage.settings reads
S3_SECRET_KEYS = ("SSLCORE_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def on_cluster(task: Any, *, node_selector: Any, tolerations: Any, dataset_pvc: Any = None,
               gpu_type: Any = None, gpus: Any = None) -> Any:
    """Apply the cluster settings to one pipeline task; returns the task.

    Args:
        task: a ``PipelineTask``.
        node_selector: pipeline parameter (dict label -> value).
        tolerations: pipeline parameter (list of toleration dicts).
        dataset_pvc: pipeline parameter (PVC name) to mount at :data:`DATASET_MOUNT`; None: no mount.
        gpu_type, gpus: pipeline parameters for the accelerator type and limit; None: no GPU.
    """
    kubernetes.add_node_selector_json(task, node_selector_json=node_selector)
    kubernetes.add_toleration_json(task, toleration_json=tolerations)
    kubernetes.use_secret_as_env(task, secret_name=S3_SECRET,
                                 secret_key_to_env={k: k for k in S3_SECRET_KEYS}, optional=True)
    if dataset_pvc is not None:
        kubernetes.mount_pvc(task, pvc_name=dataset_pvc, mount_path=DATASET_MOUNT)
    if gpus is not None:
        task.set_accelerator_type(gpu_type).set_accelerator_limit(gpus)
    return task


def named(task: Any, name: str, **settings: Optional[Any]) -> Any:
    """Set the task's display name and apply :func:`on_cluster` with ``settings``."""
    task.set_display_name(name)
    return on_cluster(task, **settings)
