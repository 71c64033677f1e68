"""A Kubernetes API emulator (kmock) on loopback with the PyTorchJob resource, and a fake operator.

kmock's KubernetesEmulator serves the API over real HTTP on 127.0.0.1; the PyTorchJob resource
(kubeflow.org/v1 pytorchjobs) is registered so the SDK's create/get/delete work. The "operator" is a
thread with its own Kubernetes client that waits for the job and patches ``status.conditions``
step by step, as the training operator does (full list each time, newest last).
"""

import asyncio
import threading
import time

import pytest

kmock = pytest.importorskip("kmock")
k8s = pytest.importorskip("kubernetes.client")
training = pytest.importorskip("kubeflow.training")

NAMESPACE = "ssl"


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
    """Waits for the job, then sets one more condition every ``step_s`` (older ones go False).

    ``name`` None follows the first job that appears; ``on_step(state)`` runs before each
    condition is written (to play what the job's pods would do by then).
    """

    def __init__(self, url, name, steps, step_s=0.15, on_step=None):
        super().__init__(daemon=True)
        self.api = k8s.CustomObjectsApi(k8s.ApiClient(_configuration(url)))
        self.job_name, self.steps, self.step_s = name, steps, step_s
        self.on_step = on_step
        self.stop = threading.Event()

    def _patch(self, conditions):
        self.api.patch_namespaced_custom_object_status(
            "kubeflow.org", "v1", NAMESPACE, "pytorchjobs", self.job_name,
            {"status": {"conditions": conditions}})

    def run(self):
        while not self.stop.is_set():  # the job appears (name None: the first one that does)
            try:
                if self.job_name is None:
                    items = self.api.list_namespaced_custom_object(
                        "kubeflow.org", "v1", NAMESPACE, "pytorchjobs")["items"]
                    if items:
                        self.job_name = items[0]["metadata"]["name"]
                        break
                else:
                    self.api.get_namespaced_custom_object("kubeflow.org", "v1", NAMESPACE,
                                                          "pytorchjobs", self.job_name)
                    break
            except k8s.ApiException:
                pass
            time.sleep(0.02)
        conditions = []
        for step in self.steps:
            if self.stop.wait(self.step_s):
                return
            conditions = [{**c, "status": "False"} for c in conditions if c["type"] != step[0]]
            conditions.append(_condition(*step))
            if self.on_step is not None:
                self.on_step(step[0])  # e.g. write what the job's pods would have written
            try:
                self._patch(conditions)
            except k8s.ApiException:  # deleted by the launcher
                return
