"""The pretrain stage on a cluster: one node in the pipeline's pod, several as a PyTorchJob.

:func:`pretrain_on_cluster` is what the pretrain component calls when NUM_NODES > 1: it renders
the PyTorchJob (:func:`sslcore.k8s.pytorchjob.build_pytorchjob`) with CHECKPOINT.DIR in object
storage, so every pod of the job, a restarted pod and the pipeline's own pod see the same
checkpoints; runs it with :func:`sslcore.k8s.launcher.run_pytorchjob`; and returns the URI of
the final checkpoint that the job's ``checkpoint.latest`` pointer names.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from sslcore.storage import is_remote, join_uri, read_latest_pointer

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# files of a run directory that downstream stages read besides the checkpoint


def current_namespace(default: str = "default") -> str:
    """The namespace of the pod this runs in (its service account's), else ``default``."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or default
    except OSError:
        return default


def job_name(prefix: str = "sslcore-pretrain") -> str:
    """A fresh DNS-1123 job name: ``<prefix>-<unix time in ms, base 36>``."""
    stamp = int(time.time() * 1000)
    digits = ""
    while stamp:
        stamp, rem = divmod(stamp, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[rem] + digits
    name = re.sub(r"[^a-z0-9-]", "-", f"{prefix}-{digits}".lower())
    return name[:63].strip("-")


def pretrain_on_cluster(overrides: Sequence[str], *, checkpoint_uri: str, nodes: int,
                        gpus_per_node: int, image: str, namespace: Optional[str] = None,
                        secret_name: Optional[str] = "sslcore-s3",
                        dataset_pvc: Optional[str] = None, dataset_mount: str = "/datasets",
                        timeout_s: float = 7 * 24 * 3600, poll_s: float = 10.0,
                        name: Optional[str] = None, client: Any = None,
                        log_line: Callable[[str], None] = print) -> str:
    """Pretrain as a PyTorchJob and return the final checkpoint's ``s3://`` URI.

    Args:
        overrides: VISSL-style overrides (``config=...`` first), data paths included; they must
            point where the job's pods see the data (``dataset_mount`` on ``dataset_pvc``).
        checkpoint_uri: the shared run directory, an ``s3://`` prefix; set as CHECKPOINT.DIR.
            A job restarted on the same prefix resumes from its ``checkpoint.latest``.
        nodes, gpus_per_node, image, secret_name: as :func:`~sslcore.k8s.pytorchjob.build_pytorchjob`.
        namespace: the job's namespace; None: this pod's namespace.
        dataset_pvc: a PersistentVolumeClaim mounted read-only at ``dataset_mount`` in every pod.
        timeout_s, poll_s: as :func:`~sslcore.k8s.launcher.run_pytorchjob` (seconds).
        name: the job's name; None: a fresh one.
        client: a kubeflow-training ``TrainingClient`` (tests); None: in-cluster configuration.
        log_line: receives status lines (the component prints them to its log).

    Raises:
        ValueError: ``checkpoint_uri`` is not ``s3://`` (pods on several machines share no disk).
        RuntimeError: the job failed (with the job's message), or finished without a checkpoint.
        TimeoutError: the job did not finish in ``timeout_s``.
        StorageError: the object store cannot be read.
    """
    from sslcore.k8s.launcher import run_pytorchjob
    from sslcore.k8s.pytorchjob import build_pytorchjob

    if not is_remote(checkpoint_uri):
        raise ValueError(
            f"checkpoint_uri={checkpoint_uri!r}: a multi-node PyTorchJob needs a shared run "
            "directory in object storage, e.g. s3://sslcore-runs/<experiment>/<run>"
        )
    job = build_pytorchjob([*overrides, f"config.CHECKPOINT.DIR={checkpoint_uri}"],
                           name=name or job_name(), image=image, nodes=nodes,
                           gpus_per_node=gpus_per_node, namespace=namespace or current_namespace(),
                           secret_name=secret_name, dataset_pvc=dataset_pvc,
                           dataset_mount=dataset_mount)
    run_pytorchjob(job, client=client, timeout_s=timeout_s, poll_s=poll_s, log=log_line)
    final = read_latest_pointer(checkpoint_uri)
    if final is None:
        raise RuntimeError(f"PyTorchJob {job.metadata.name} succeeded but {checkpoint_uri} has no "
                           "checkpoint.latest: check CHECKPOINT.DIR in the job's config")
    return join_uri(checkpoint_uri, final)


def stage_dataset(src: Path, dest: Path) -> Path:
    """Copy a dataset directory onto the shared dataset volume so a PyTorchJob's pods can read it.

    Args:
        src: the dataset artifact (disk_filelist ``.npy`` files and the manifest).
        dest: a directory on the dataset PVC as mounted in this pod.

    Returns:
        ``dest``.

    Raises:
        FileNotFoundError: ``src`` is not a directory.
        OSError: ``dest`` is not writable (mount the PVC read-write in the pipeline's pod).
    """
    import shutil

    if not Path(src).is_dir():
        raise FileNotFoundError(f"dataset {src} is not a directory")
    shutil.copytree(src, dest, dirs_exist_ok=True)
    return Path(dest)
