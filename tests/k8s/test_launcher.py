"""run_pytorchjob against a Kubernetes API emulator (kmock) on loopback, with a fake operator
(tests/k8s/kmock_cluster.py)."""

import itertools
import time

import pytest
from kmock_cluster import (CREATED, FAILED, NAMESPACE, RESTARTING, RUNNING, SUCCEEDED,  # noqa: F401
                           FakeOperator, api_url, client, k8s)

from sslcore.k8s.launcher import run_pytorchjob
from sslcore.k8s.pytorchjob import build_pytorchjob

RECIPE = "config=pretrain/simclr/simclr_fashion_mnist_cpu"
_names = itertools.count()


def _job():
    return build_pytorchjob([RECIPE], name=f"simclr-{next(_names)}", image="sslcore:test",
                            nodes=2, gpus_per_node=0, namespace=NAMESPACE)


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
