"""The pretrain component with num_nodes > 1: a PyTorchJob on a Kubernetes API emulator (kmock) and
its checkpoints in a real S3 server (rclone), both on loopback.

The fake operator plays the job's pods: when it marks the job Succeeded it has written what
``sslcore train`` writes to the shared s3:// CHECKPOINT.DIR (checkpoint, log, config, pointer).
"""

import json

import pytest
import torch
from kfp import dsl
from kmock_cluster import (CREATED, FAILED, NAMESPACE, RUNNING, SUCCEEDED, FakeOperator,  # noqa: F401
                           api_url, k8s)

from components.pretrain import pretrain
from sslcore import storage

RUN = "s3://runs/cluster/simclr-2n"


@pytest.fixture
def kubeconfig(api_url, tmp_path, monkeypatch):
    """KUBECONFIG pointing at the emulator: the component builds its TrainingClient from it."""
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": api_url}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "u",
                                                   "namespace": NAMESPACE}}],
        "users": [{"name": "u", "user": {"token": "test"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


def _dataset(tmp_path):
    path = tmp_path / "dataset"
    path.mkdir(exist_ok=True)
    for name in ("train_images.npy", "train_labels.npy", "manifest.json"):
        (path / name).write_bytes(b"x")
    return dsl.Dataset(name="dataset", uri=str(path), metadata={})


class JobPods:
    """What the job's pods do, in the operator's thread: record the job, write the run dir."""

    def __init__(self, api_url):
        self.api = k8s.CustomObjectsApi(k8s.ApiClient(_config(api_url)))
        self.job = None

    def __call__(self, state):
        if state == "Created":
            (self.job,) = self.api.list_namespaced_custom_object(
                "kubeflow.org", "v1", NAMESPACE, "pytorchjobs")["items"]
        if state == "Succeeded":
            storage.write_bytes(f"{RUN}/model_final_checkpoint_phase1.torch", _checkpoint())
            storage.write_bytes(f"{RUN}/stdout.json", b'{"iteration": 1, "loss": 2.0}\n')
            storage.write_bytes(f"{RUN}/train_config.yaml", b"config: {}\n")
            storage.write_latest_pointer(RUN, "model_final_checkpoint_phase1.torch")


def _config(url):
    configuration = k8s.Configuration()
    configuration.host = url
    return configuration


def _checkpoint():
    import io

    buf = io.BytesIO()
    torch.save({"phase_idx": 1, "classy_state_dict": {}}, buf)
    return buf.getvalue()


def _run_component(api_url, tmp_path, steps, **kwargs):
    pods = JobPods(api_url)
    model = dsl.Model(name="model", uri=str(tmp_path / "model"), metadata={})
    operator = FakeOperator(api_url, None, steps, on_step=pods)
    operator.start()
    try:
        pretrain.python_func(dataset=_dataset(tmp_path), config="pretrain/simclr/quick_simclr",
                             model=model, overrides=["config.OPTIMIZER.num_epochs=2"], num_nodes=2,
                             gpus_per_node=0, checkpoint_uri=RUN, dataset_pvc="sslcore-datasets",
                             dataset_mount=str(tmp_path / "pvc"), image="sslcore:test",
                             namespace=NAMESPACE, job_timeout_s=30, job_poll_s=0.05, **kwargs)
    finally:
        operator.stop.set()
        operator.join(5)
    return pods, model


def test_two_nodes_run_as_a_pytorchjob_and_return_the_final_checkpoint(
        s3_env, kubeconfig, api_url, tmp_path, monkeypatch):
    monkeypatch.setenv("SSLCORE_CACHE_DIR", str(tmp_path / "cache"))
    pods, model = _run_component(api_url, tmp_path, [CREATED, RUNNING, SUCCEEDED])

    spec = pods.job["spec"]["pytorchReplicaSpecs"]
    assert spec["Master"]["replicas"] == 1 and spec["Worker"]["replicas"] == 1
    pod = spec["Master"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert container["name"] == "pytorch" and container["image"] == "sslcore:test"
    assert "--nnodes=2" in args and f"config.CHECKPOINT.DIR={RUN}" in args
    staged = tmp_path / "pvc" / pods.job["metadata"]["name"]
    assert f"config.DATA.TRAIN.DATA_PATHS=[{staged}/train_images.npy]" in args
    assert (staged / "train_images.npy").exists(), "dataset not copied onto the shared volume"
    assert {"name": "datasets", "persistentVolumeClaim": {"claimName": "sslcore-datasets",
                                                          "readOnly": True}} in pod["volumes"]

    out = tmp_path / "model"
    assert model.metadata["checkpoint_uri"] == f"{RUN}/model_final_checkpoint_phase1.torch"
    assert model.metadata["checkpoint_file"] == "model_final_checkpoint_phase1.torch"
    assert torch.load(out / "model_final_checkpoint_phase1.torch", weights_only=True)["phase_idx"] == 1
    assert (out / "stdout.json").exists() and (out / "train_config.yaml").exists()
    with pytest.raises(k8s.ApiException, match="404|Not Found"):  # cleaned up
        pods.api.get_namespaced_custom_object("kubeflow.org", "v1", NAMESPACE, "pytorchjobs",
                                              pods.job["metadata"]["name"])


def test_a_failed_job_fails_the_stage_with_the_jobs_message(s3_env, kubeconfig, api_url, tmp_path):
    with pytest.raises(RuntimeError, match="pod master-0 exited 1: OOM"):
        _run_component(api_url, tmp_path, [CREATED, RUNNING, FAILED])


def test_several_nodes_need_shared_storage(tmp_path):
    model = dsl.Model(name="model", uri=str(tmp_path / "model"), metadata={})
    with pytest.raises(ValueError, match="dataset_pvc"):
        pretrain.python_func(dataset=_dataset(tmp_path), config="c", model=model, num_nodes=2,
                             checkpoint_uri=RUN)
    with pytest.raises(ValueError, match="s3://"):
        pretrain.python_func(dataset=_dataset(tmp_path), config="pretrain/simclr/quick_simclr",
                             model=model, num_nodes=2, checkpoint_uri=str(tmp_path / "ckpt"),
                             dataset_pvc="pvc", dataset_mount=str(tmp_path / "pvc"))
