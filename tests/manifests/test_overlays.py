"""The kustomize overlays under manifests/: each renders offline, and what it renders is valid.

Built-in kinds are checked with `kubernetes-validate --strict` against its bundled schemas (no
network); PyTorchJobs by a lossless round trip through the kubeflow-training SDK models, and
their pod templates as Pods with `kubernetes-validate --strict`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = REPO / "manifests" / "overlays"
OVERLAY_NAMES = sorted(p.name for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").is_file())
BIN = Path(sys.executable).parent
K8S_VERSION = "1.37.0"  # a version whose schemas kubernetes-validate 1.37.0 ships
SECRET_PLACEHOLDERS = {"CHANGE_ME"}
SECRET_NON_SECRET_KEYS = {"SSLCORE_S3_ENDPOINT"}  # plain settings kept next to the credentials


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found next to {sys.executable} or on PATH (pip install -e '.[test]')")
    return found


@lru_cache(maxsize=None)
def render(overlay: str) -> tuple[dict, ...]:
    """Render one overlay with `kubectl kustomize` (offline) into its list of objects."""
    out = subprocess.run([_tool("kubectl"), "kustomize", str(OVERLAYS / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def validate_strict(objects: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    manifest = tmp_path / "objects.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    return subprocess.run([_tool("kubernetes-validate"), "--strict", "--quiet",
                           "--kubernetes-version", K8S_VERSION, str(manifest)],
                          capture_output=True, text=True, timeout=60)


def all_objects() -> list[tuple[str, dict]]:
    return [(name, obj) for name in OVERLAY_NAMES for obj in render(name)]


def pytorchjobs() -> list[tuple[str, dict]]:
    return [(name, obj) for name, obj in all_objects() if obj["kind"] == "PyTorchJob"]


def test_expected_overlays_exist():
    assert {"local-minio", "platform", "pytorchjob-single-node", "pytorchjob-multi-node"} <= set(OVERLAY_NAMES)


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_overlay_renders_into_its_namespace(overlay):
    objects = render(overlay)
    assert objects
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "sslcore", obj["metadata"]["name"]


def is_builtin(obj: dict) -> bool:
    """Core (v1) and *.k8s.io / apps / batch groups: the kinds kubernetes-validate has schemas for."""
    group = obj["apiVersion"].rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


@pytest.mark.parametrize("overlay", [n for n in OVERLAY_NAMES if any(map(is_builtin, render(n)))])
def test_builtin_kinds_pass_strict_schema_validation(overlay, tmp_path):
    builtin = [obj for obj in render(overlay) if is_builtin(obj)]
    result = validate_strict(builtin, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_rejects_unknown_fields(tmp_path):
    """Guards the test above: the bundled schemas load offline and --strict bites."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
           "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "imagePullPolicee": "Always"}]}}
    result = validate_strict([pod], tmp_path)
    assert result.returncode != 0
    assert "imagePullPolicee" in result.stdout + result.stderr


@pytest.mark.parametrize("overlay,job", pytorchjobs(), ids=lambda v: v if isinstance(v, str) else "")
def test_pytorchjob_round_trips_through_the_sdk_models(overlay, job):
    from kubeflow.training.api_client import ApiClient
    from kubeflow.training.models import KubeflowOrgV1PyTorchJob

    class _Response:  # what ApiClient.deserialize reads
        data = json.dumps(job)

    client = ApiClient()
    model = client.deserialize(_Response(), "KubeflowOrgV1PyTorchJob")
    assert isinstance(model, KubeflowOrgV1PyTorchJob)
    # the models drop fields they do not know, so equality also catches misspelt keys
    assert client.sanitize_for_serialization(model) == job


@pytest.mark.parametrize("overlay,job", pytorchjobs(), ids=lambda v: v if isinstance(v, str) else "")
def test_pytorchjob_is_consistent_and_its_pods_validate(overlay, job, tmp_path):
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) <= {"Master", "Worker"} and specs["Master"]["replicas"] == 1
    nodes = sum(spec["replicas"] for spec in specs.values())
    nproc = job["spec"]["nprocPerNode"]
    pods = []
    for role, spec in specs.items():
        template = spec["template"]
        (container,) = template["spec"]["containers"]
        assert container["name"] == "pytorch"  # the operator looks for this name
        assert container["image"] == "ghcr.io/sslcore/sslcore:0.1.0"
        assert container["command"] == ["torchrun"]
        assert container["args"][container["args"].index("-m") + 1:][:2] == ["sslcore.cli", "train"]
        assert any(a.startswith("config.CHECKPOINT.DIR=s3://") for a in container["args"])
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["SSLCORE_NUM_NODES"] == str(nodes), role
        assert env["SSLCORE_NPROC_PER_NODE"] == nproc, role
        for kind in ("requests", "limits"):
            assert container["resources"][kind]["nvidia.com/gpu"] == nproc, role
        assert {"secretRef": {"name": "sslcore-s3"}} in container["envFrom"]
        pods.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"{job['metadata']['name']}-{role.lower()}",
                                  **template.get("metadata", {})},
                     "spec": {**template["spec"], "restartPolicy": spec["restartPolicy"]}})
    result = validate_strict(pods, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pytorchjob_overlays_differ_in_size():
    sizes = {}
    for overlay, job in pytorchjobs():
        specs = job["spec"]["pytorchReplicaSpecs"]
        sizes[overlay] = (sum(s["replicas"] for s in specs.values()), int(job["spec"]["nprocPerNode"]))
    assert sizes["pytorchjob-single-node"][0] == 1
    assert sizes["pytorchjob-multi-node"][0] > 1


def test_no_secret_carries_a_real_value():
    secrets = [(name, obj) for name, obj in all_objects() if obj["kind"] == "Secret"]
    assert secrets, "the credentials template should be rendered by some overlay"
    for overlay, secret in secrets:
        assert not secret.get("data"), f"{overlay}: base64 data hides values; use stringData placeholders"
        for key, value in secret.get("stringData", {}).items():
            if key not in SECRET_NON_SECRET_KEYS:
                assert value in SECRET_PLACEHOLDERS, f"{overlay}: Secret {secret['metadata']['name']}.{key}"


def test_rbac_role_grants_exactly_what_pipeline_pods_need():
    objects = render("platform")
    (role,) = [o for o in objects if o["kind"] == "Role"]
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    allowed = ({("kubeflow.org", "pytorchjobs", v) for v in ("create", "get", "list", "watch", "delete")}
               | {("", r, v) for r in ("pods", "pods/log") for v in ("get", "list", "watch")})
    assert granted == allowed
    assert not any(o["kind"] in {"ClusterRole", "ClusterRoleBinding"} for _, o in all_objects())
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sslcore-pipeline-runner",
                                    "namespace": "sslcore"}]
    assert any(o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "sslcore-pipeline-runner"
               for o in objects)


def test_images_are_pinned_and_pods_run_as_non_root():
    for overlay, obj in all_objects():
        spec = obj.get("spec", {})
        templates = ([s["template"] for s in spec["pytorchReplicaSpecs"].values()]
                     if obj["kind"] == "PyTorchJob" else [spec["template"]] if "template" in spec else [])
        for template in templates:
            assert template["spec"]["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
            for container in template["spec"]["containers"]:
                image = container["image"]
                tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
                assert tag and tag != "latest", f"{overlay}: {image} is not pinned"


@pytest.mark.parametrize("overlay,job", pytorchjobs(), ids=lambda v: v if isinstance(v, str) else "")
def test_pytorchjob_train_overrides_compose(overlay, job):
    """The `sslcore train` arguments, with the pod's $(VAR)s filled in, are a valid config."""
    import re

    from sslcore.config.loader import compose_config

    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    args = container["args"]
    overrides = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args[args.index("train") + 1:]]
    cfg = compose_config(overrides)
    assert cfg.DISTRIBUTED.NUM_NODES == int(env["SSLCORE_NUM_NODES"])
    assert cfg.CHECKPOINT.DIR.startswith("s3://")


def test_kfp_launcher_stores_artifacts_in_the_sslcore_minio():
    from pipelines.cluster import PIPELINE_ROOT, S3_SECRET

    objects = {(o["kind"], o["metadata"]["name"]): o for o in render("platform")}
    launcher = objects[("ConfigMap", "kfp-launcher")]["data"]
    assert launcher["defaultPipelineRoot"] == PIPELINE_ROOT
    s3 = yaml.safe_load(launcher["providers"])["s3"]["default"]
    service = objects[("Service", "minio")]
    namespace = service["metadata"]["namespace"]
    api_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "api")
    assert s3["endpoint"] == f"minio.{namespace}.svc.cluster.local:{api_port}"
    ref = s3["credentials"]["secretRef"]
    secret = objects[("Secret", ref["secretName"])]
    assert ref["secretName"] == S3_SECRET
    assert {ref["accessKeyKey"], ref["secretKeyKey"]} <= set(secret["stringData"])
    bucket_job = objects[("Job", "minio-create-bucket")]
    bucket = PIPELINE_ROOT[len("s3://"):].split("/")[0]
    assert f"mc mb --ignore-existing sslcore/{bucket}" in json.dumps(bucket_job)
