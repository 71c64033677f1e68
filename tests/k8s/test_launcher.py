"""run_pytorchjob against a Kubernetes API emulator (kmock) on loopback, with a fake operator.

kmock's KubernetesEmulator serves the API over real HTTP on 127.0.0.1; the PyTorchJob resource
(kubeflow.org/v1 pytorchjobs) is registered so the SDK's create/get/delete work. The "operator" is a
thread with its own Kubernetes client that waits for the job and patches ``status.conditions``
step by step, as the training operator does (full list each time, newest last).
"""

import asyncio
import itertools
import threading
import time

import pytest

kmock = pytest.importorskip("kmock")
k8s = pytest.importorskip("kubernetes.client")
training = pytest.importorskip("kubeflow.training")

from sslcore.k8s.launcher import run_pytorchjob  # noqa: E402
from sslcore.k8s.pytorchjob import build_pytorchjob  # noqa: E402

RECIPE = "config=pretrain/simclr/simclr_fashion_mnist_cpu"
NAMESPACE = "ssl"
_names = itertools.count()


@pytest.fixture(scope="module")
def api_url():
    """A kmock Kubernetes emulator on a free loopback port, served from its own event loop."""
    ready, box = threading.Event(), {}

    async def serve():
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            emulator.resources["kubeflow.org/v1/pytorchjobs"] = kmock.ResourceInfo(
                namespaced=True, kind="PyTorchJob", singular="pytorchjob",
                verbs={"create", "get", "list", "watch", "patch", "update", "delete"},
                subresources={"status"})
            box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
            box["url"] = f"http://127.0.0.1:{server.port}"
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(10), "kmock did not start"
    yield box["url"]
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(10)


def _configuration(url):
    configuration = k8s.Configuration()
    configuration.host = url
    return configuration


@pytest.fixture
def client(api_url):
    return training.TrainingClient(client_configuration=_configuration(api_url),
                                   namespace="default")


def _job():
    return build_pytorchjob([RECIPE], name=f"simclr-{next(_names)}", image="sslcore:test",
                            nodes=2, gpus_per_node=0, namespace=NAMESPACE)


def _condition(type_, reason, message, status="True"):
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "lastUpdateTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


CREATED = ("Created", "PyTorchJobCreated", "PyTorchJob simclr is created.")
RUNNING = ("Running", "PyTorchJobRunning", "PyTorchJob simclr is running.")
RESTARTING = ("Restarting", "PyTorchJobRestarting",
              "PyTorchJob simclr is restarting because 1 Master replica(s) failed.")
SUCCEEDED = ("Succeeded", "PyTorchJobSucceeded", "PyTorchJob simclr is successfully completed.")
FAILED = ("Failed", "PyTorchJobFailed", "pod master-0 exited 1: OOM")


class FakeOperator(threading.Thread):
    """Waits for the job, then sets one more condition every ``step_s`` (older ones go False)."""

    def __init__(self, url, name, steps, step_s=0.15):
        super().__init__(daemon=True)
        self.api = k8s.CustomObjectsApi(k8s.ApiClient(_configuration(url)))
        self.name, self.steps, self.step_s = name, steps, step_s
        self.stop = threading.Event()

    def _patch(self, conditions):
        self.api.patch_namespaced_custom_object_status(
            "kubeflow.org", "v1", NAMESPACE, "pytorchjobs", self.name,
            {"status": {"conditions": conditions}})

    def run(self):
        while not self.stop.is_set():  # the job appears
            try:
                self.api.get_namespaced_custom_object("kubeflow.org", "v1", NAMESPACE,
                                                      "pytorchjobs", self.name)
                break
            except k8s.ApiException:
                time.sleep(0.02)
        conditions = []
        for step in self.steps:
            if self.stop.wait(self.step_s):
                return
            conditions = [{**c, "status": "False"} for c in conditions if c["type"] != step[0]]
            conditions.append(_condition(*step))
            try:
                self._patch(conditions)
            except k8s.ApiException:  # deleted by the launcher
                return


def _run(api_url, client, steps, **kwargs):
    job, lines = _job(), []
    operator = FakeOperator(api_url, job.metadata.name, steps)
    operator.start()
    try:
        kwargs = {"timeout_s": 20, "poll_s": 0.03, **kwargs}
        return job, lines, run_pytorchjob(job, client=client, log=lines.append, **kwargs)
    except Exception as e:
        e.job, e.lines = job, lines
        raise
    finally:
        operator.stop.set()
        operator.join(5)


def _assert_deleted(client, job):
    with pytest.raises(RuntimeError, match="404"):
        client.get_job(job.metadata.name, namespace=NAMESPACE)


def test_succeeded_returns_and_deletes_the_job(api_url, client):
    job, lines, result = _run(api_url, client, [CREATED, RUNNING, SUCCEEDED])
    assert result["name"] == job.metadata.name and result["namespace"] == NAMESPACE
    assert result["status"] == "Succeeded" and 0 < result["seconds"] < 20
    states = [line.split(": ", 1)[1].split(" ")[0] for line in lines]
    assert states == ["submitted", "Created", "Running", "Succeeded", "deleted"]
    _assert_deleted(client, job)


def test_failed_raises_with_the_jobs_message_and_deletes_it(api_url, client):
    with pytest.raises(RuntimeError, match="pod master-0 exited 1: OOM") as raised:
        _run(api_url, client, [CREATED, RUNNING, FAILED])
    assert raised.value.job.metadata.name in str(raised.value)
    assert any("Failed (PyTorchJobFailed: pod master-0 exited 1: OOM)" in line
               for line in raised.value.lines)
    _assert_deleted(client, raised.value.job)


def test_timeout_names_the_job_and_last_status_and_deletes_it(api_url, client):
    begin = time.monotonic()
    with pytest.raises(TimeoutError, match="last status: Running") as raised:
        _run(api_url, client, [CREATED, RUNNING], timeout_s=1.0)
    assert 1.0 <= time.monotonic() - begin < 5
    assert f"{NAMESPACE}/{raised.value.job.metadata.name}" in str(raised.value)
    _assert_deleted(client, raised.value.job)


def test_restarted_master_is_logged_and_waiting_continues(api_url, client):
    steps = [CREATED, RUNNING, RESTARTING, RUNNING, SUCCEEDED]
    job, lines, result = _run(api_url, client, steps)
    assert result["status"] == "Succeeded"
    states = [line.split(": ", 1)[1].split(" ")[0] for line in lines]
    assert states == ["submitted", "Created", "Running", "Restarting", "Running", "Succeeded",
                      "deleted"]
    assert any("1 Master replica(s) failed" in line for line in lines)
    _assert_deleted(client, job)


def test_cleanup_false_keeps_the_job(api_url, client):
    job, _, result = _run(api_url, client, [CREATED, SUCCEEDED], cleanup=False)
    assert result["status"] == "Succeeded"
    kept = client.get_job(job.metadata.name, namespace=NAMESPACE)
    assert client.get_job_conditions(job=kept)[-1].type == "Succeeded"
    client.delete_job(job.metadata.name, namespace=NAMESPACE)
