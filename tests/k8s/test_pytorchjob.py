"""The rendered PyTorchJob: SDK round trip, strict pod validation, topology, early config errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sslcore.config import ConfigError
from sslcore.k8s.pytorchjob import build_pytorchjob, render_pytorchjob_yaml, to_manifest

RECIPE = "config=pretrain/simclr/simclr_fashion_mnist_cpu"
BIN = Path(sys.executable).parent


def _render(nodes=4, gpus=8, **kw):
    return yaml.safe_load(render_pytorchjob_yaml([RECIPE, "config.OPTIMIZER.num_epochs=100"],
                                                 name="simclr", image="img:1", nodes=nodes,
                                                 gpus_per_node=gpus, **kw))


def test_round_trip_through_the_sdk_models():
    from kubeflow.training import ApiClient

    manifest = _render()

    class _Response:  # what the SDK deserialises: an HTTP response body
        data = json.dumps(manifest)

    job = ApiClient().deserialize(_Response, "KubeflowOrgV1PyTorchJob")
    assert to_manifest(job) == manifest


def test_topology_and_container_contract():
    spec = _render(nodes=4, gpus=8)["spec"]["pytorchReplicaSpecs"]
    assert spec["Master"]["replicas"] == 1 and spec["Worker"]["replicas"] == 3
    container = spec["Worker"]["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container["envFrom"] == [{"secretRef": {"name": "sslcore-s3"}}]
    assert "--nnodes=4" in container["args"] and "--nproc_per_node=8" in container["args"]
    assert "--node_rank=$(RANK)" in container["args"]
    tail = container["args"][container["args"].index("train") + 1:]
    assert tail == [RECIPE, "config.OPTIMIZER.num_epochs=100"]
    single = _render(nodes=1, gpus=0, secret_name=None)["spec"]["pytorchReplicaSpecs"]
    assert "Worker" not in single
    c = single["Master"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in c and "nvidia.com/gpu" not in c["resources"]["limits"]
    assert c["args"][-1] == "config.MACHINE.DEVICE=cpu"


def test_pod_template_passes_strict_validation(tmp_path):
    template = _render()["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "simclr-master-0", **template["metadata"]},
           "spec": template["spec"]}
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    done = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    pod["spec"]["containers"][0]["bogus"] = 1  # the validator does reject unknown fields
    path.write_text(yaml.safe_dump(pod))
    assert subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(path)],
                          capture_output=True, timeout=120).returncode != 0


def test_bad_config_fails_at_render_time():
    with pytest.raises(ConfigError, match="num_epochs"):
        build_pytorchjob([RECIPE, "config.OPTIMIZER.num_epoch=1"], name="x", image="i", nodes=2,
                         gpus_per_node=1)
    with pytest.raises(ValueError, match="config="):
        build_pytorchjob(["config.OPTIMIZER.num_epochs=1"], name="x", image="i", nodes=2,
                         gpus_per_node=1)


def test_cli_writes_the_yaml(tmp_path):
    from sslcore.cli import main

    out = tmp_path / "job.yaml"
    assert main(["k8s", "pytorchjob", RECIPE, "--nodes", "2", "--gpus-per-node", "4",
                 "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert main(["k8s", "pytorchjob", RECIPE, "config.NOPE=1"]) == 2
