"""Render a Kubeflow PyTorchJob (kubeflow.org/v1) that runs ``sslcore train`` on several nodes.

The job has one ``Master`` and ``nodes - 1`` ``Worker`` replicas; each pod runs one container named
``pytorch`` (the name the training operator requires) that starts ``torchrun`` with one process
per GPU. The operator injects MASTER_ADDR, MASTER_PORT and RANK (the pod's rank) into every pod;
the container arguments refer to them with Kubernetes' ``$(VAR)`` expansion, so the same
``sslcore train`` entry point runs under env:// rendezvous as it does on one machine. The storage
secret is passed as environment (``envFrom``), and a memory-backed ``/dev/shm`` lets DataLoader
workers share batches. The spec is built from the kubeflow-training SDK's models, so a field the
operator does not know cannot be written.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import yaml

SHM_SIZE = "16Gi"


def _container(image: str, args: List[str], gpus_per_node: int, secret_name: Optional[str],
               cpu: str, memory: str, dataset_mount: Optional[str]) -> Dict[str, Any]:
    from kubernetes.client import (V1Container, V1EnvFromSource, V1ResourceRequirements,
                                   V1SecretEnvSource, V1VolumeMount)

    limits = {"cpu": cpu, "memory": memory}
    if gpus_per_node > 0:
        limits["nvidia.com/gpu"] = str(gpus_per_node)
    env_from = [V1EnvFromSource(secret_ref=V1SecretEnvSource(name=secret_name))] if secret_name else None
    return V1Container(
        name="pytorch", image=image, image_pull_policy="IfNotPresent",
        command=["torchrun"], args=args, env_from=env_from,
        resources=V1ResourceRequirements(limits=limits, requests={"cpu": cpu, "memory": memory}),
        volume_mounts=[V1VolumeMount(name="dshm", mount_path="/dev/shm")] + (
            [V1VolumeMount(name="datasets", mount_path=dataset_mount, read_only=True)]
            if dataset_mount else []),
    )


def build_pytorchjob(overrides: Sequence[str], *, name: str, image: str, nodes: int,
                     gpus_per_node: int, namespace: str = "default",
                     secret_name: Optional[str] = "sslcore-s3", cpu: str = "8",
                     memory: str = "64Gi", backoff_limit: int = 3,
                     dataset_pvc: Optional[str] = None, dataset_mount: str = "/datasets") -> Any:
    """Build the PyTorchJob as a kubeflow-training SDK model.

    Args:
        overrides: VISSL-style overrides for ``sslcore train`` (``config=...`` first). The
            topology (DISTRIBUTED.NUM_NODES, NUM_PROC_PER_NODE) is inferred inside the job from
            torchrun's environment and recorded in the saved config.
        name: the job's name (a DNS-1123 label).
        image: the sslcore runtime image.
        nodes: pods (machines); 1 gives a Master only.
        gpus_per_node: processes per pod, each with one GPU; 0 runs one CPU process per pod.
        namespace: where the job runs.
        secret_name: Secret whose keys become environment (S3 endpoint and credentials); None: none.
        cpu, memory: per-pod requests and limits.
        backoff_limit: pod restarts before the job fails; a restarted pod resumes from the last
            checkpoint in CHECKPOINT.DIR (AUTO_RESUME).
        dataset_pvc: a PersistentVolumeClaim holding the datasets, mounted read-only at
            ``dataset_mount`` in every pod (manifests/base/datasets); None: no volume.

    Returns:
        ``KubeflowOrgV1PyTorchJob``.

    Raises:
        ValueError: nodes < 1, gpus_per_node < 0, or no ``config=`` override.
        ConfigError: an override the schema refuses (a ValueError).
    """
    from kubeflow.training import models
    from kubernetes.client import (V1EmptyDirVolumeSource, V1ObjectMeta,
                                   V1PersistentVolumeClaimVolumeSource, V1PodSpec,
                                   V1PodTemplateSpec, V1Volume)

    if nodes < 1 or gpus_per_node < 0:
        raise ValueError(f"need nodes >= 1 and gpus_per_node >= 0, got {nodes} and {gpus_per_node}")
    if not any(o.startswith("config=") for o in overrides):
        raise ValueError("the overrides need a recipe: config=pretrain/<method>/<file>")
    from sslcore.config.loader import compose_config

    compose_config(overrides)  # a wrong key fails here, not hours later in the cluster
    procs = max(gpus_per_node, 1)
    args = [f"--nnodes={nodes}", f"--nproc_per_node={procs}", "--node_rank=$(RANK)",
            "--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)",
            "-m", "sslcore.cli", "train", *overrides]
    if gpus_per_node == 0:
        args.append("config.MACHINE.DEVICE=cpu")
    template = V1PodTemplateSpec(
        metadata=V1ObjectMeta(labels={"app.kubernetes.io/name": "sslcore",
                                      "app.kubernetes.io/component": "pretrain"}),
        spec=V1PodSpec(
            containers=[_container(image, args, gpus_per_node, secret_name, cpu, memory,
                                   dataset_mount if dataset_pvc else None)],
            volumes=[V1Volume(name="dshm", empty_dir=V1EmptyDirVolumeSource(medium="Memory",
                                                                            size_limit=SHM_SIZE))] + (
                [V1Volume(name="datasets", persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
                    claim_name=dataset_pvc, read_only=True))] if dataset_pvc else []),
        ),
    )
    replicas = {"Master": models.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="OnFailure",
                                                          template=template)}
    if nodes > 1:
        replicas["Worker"] = models.KubeflowOrgV1ReplicaSpec(
            replicas=nodes - 1, restart_policy="OnFailure", template=template)
    return models.KubeflowOrgV1PyTorchJob(
        api_version="kubeflow.org/v1", kind="PyTorchJob",
        metadata=V1ObjectMeta(name=name, namespace=namespace,
                              labels={"app.kubernetes.io/name": "sslcore"}),
        spec=models.KubeflowOrgV1PyTorchJobSpec(
            pytorch_replica_specs=replicas,
            run_policy=models.KubeflowOrgV1RunPolicy(backoff_limit=backoff_limit,
                                                     clean_pod_policy="None"),
        ),
    )


def to_manifest(job: Any) -> Dict[str, Any]:
    """The job as a plain dict in the API's camelCase field names, ready for YAML."""
    from kubeflow.training import ApiClient

    return ApiClient().sanitize_for_serialization(job)


def render_pytorchjob_yaml(overrides: Sequence[str], **kwargs: Any) -> str:
    """YAML for ``kubectl apply -f``; arguments as :func:`build_pytorchjob`."""
    return yaml.safe_dump(to_manifest(build_pytorchjob(overrides, **kwargs)), sort_keys=False)
