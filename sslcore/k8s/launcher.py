"""Launch a PyTorchJob and wait for it: create, follow its conditions, clean up.

The pretrain stage on a cluster hands its job (built by
:func:`sslcore.k8s.pytorchjob.build_pytorchjob`) to :func:`run_pytorchjob`, which talks to the
Kubernetes API only through the kubeflow-training SDK (``TrainingClient.create_job`` /
``get_job_conditions`` / ``delete_job``). The training operator reports progress as conditions
on the job's status (``Created``, ``Running``, ``Restarting``, ``Succeeded``, ``Failed``);
it sets the newest one last and flips the superseded ones to ``status: "False"``, so the job's
state is its last condition whose status is ``"True"``. A restarted master pod
(``Restarting``) needs nothing from the launcher: the pod resumes from the last checkpoint
(AUTO_RESUME), and waiting goes on.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

TERMINAL = ("Succeeded", "Failed")


def run_pytorchjob(job: Any, *, client: Optional[Any] = None, timeout_s: float,
                   poll_s: float = 5, cleanup: bool = True,
                   log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Create ``job``, log each change of its state, and wait until it succeeds, fails or times out.

    Args:
        job: a ``KubeflowOrgV1PyTorchJob`` with ``metadata.name`` set; ``metadata.namespace`` is
            used when set, else the client's namespace.
        client: a ``kubeflow.training.TrainingClient``; None: one built from the in-cluster
            service account or the local kubeconfig.
        timeout_s: seconds (wall clock, from creation) to wait for Succeeded or Failed.
        poll_s: seconds between status reads.
        cleanup: delete the job when waiting ends, whatever the outcome (success, failure,
            timeout, or an API error while waiting).
        log: receives one line per state change, e.g.
            ``"PyTorchJob default/simclr: Running (PyTorchJobRunning: ...)"``.

    Returns:
        ``{"name": str, "namespace": str, "status": "Succeeded", "seconds": float}``, seconds
        from creation to the end of waiting.

    Raises:
        RuntimeError: the job failed (the message carries the job's Failed condition message),
            or the SDK could not create or read it.
        TimeoutError: the job did not finish within ``timeout_s``; names the job and its last state.

    Example:
        >>> job = build_pytorchjob(["config=pretrain/simclr/simclr_fashion_mnist_cpu"],
        ...                        name="simclr", image="sslcore:1", nodes=2, gpus_per_node=8)
        >>> run_pytorchjob(job, timeout_s=86400)  # doctest: +SKIP
        {'name': 'simclr', 'namespace': 'default', 'status': 'Succeeded', 'seconds': 5123.4}
    """
    if client is None:
        from kubeflow.training import TrainingClient

        # KUBECONFIG read now (the kubernetes package reads it once, at import); else in-cluster
        client = TrainingClient(config_file=os.environ.get("KUBECONFIG") or None)
    name = job.metadata.name
    namespace = job.metadata.namespace or client.namespace
    label = f"PyTorchJob {namespace}/{name}"

    start = time.monotonic()
    client.create_job(job, namespace=namespace)
    log(f"{label}: submitted")
    try:
        status = _wait_for_job(client, name, namespace, label=label, start=start,
                               timeout_s=timeout_s, poll_s=poll_s, log=log)
    finally:
        if cleanup:
            _delete_job(client, name, namespace, label=label, log=log)
    return {"name": name, "namespace": namespace, "status": status,
            "seconds": time.monotonic() - start}


def _wait_for_job(client: Any, name: str, namespace: str, *, label: str, start: float,
                  timeout_s: float, poll_s: float, log: Callable[[str], None]) -> str:
    """Poll until Succeeded (returned) or Failed / timeout (raised); log each state change."""
    last: Optional[Tuple[Any, ...]] = None
    state = "Submitted"
    while True:
        conditions = client.get_job_conditions(name=name, namespace=namespace)
        current = current_condition(conditions)
        if current is not None:
            key = (current.type, current.reason, current.message, current.last_transition_time)
            if key != last:
                last, state = key, current.type
                log(f"{label}: {_describe(current)}")
            if current.type == "Succeeded":
                return state
            if current.type == "Failed":
                raise RuntimeError(f"{label} failed: {current.message or current.reason}")
        remaining = timeout_s - (time.monotonic() - start)
        if remaining <= 0:
            raise TimeoutError(f"{label} did not finish within {timeout_s:g} s; "
                               f"last status: {state}")
        time.sleep(min(poll_s, remaining))


def current_condition(conditions: List[Any]) -> Optional[Any]:
    """The job's state: a true Failed or Succeeded condition, else the last true condition.

    Args:
        conditions: the job's ``V1JobCondition`` list, oldest first (as the operator writes it).

    Returns:
        The condition, or None while the operator has reported nothing.
    """
    true = [c for c in conditions if c.status == "True"]
    for terminal in TERMINAL:
        for condition in true:
            if condition.type == terminal:
                return condition
    return true[-1] if true else None


def _describe(condition: Any) -> str:
    detail = ": ".join(part for part in (condition.reason, condition.message) if part)
    return f"{condition.type} ({detail})" if detail else condition.type


def _delete_job(client: Any, name: str, namespace: str, *, label: str,
                log: Callable[[str], None]) -> None:
    """Delete the job; a failure to delete is logged, never raised over the job's own outcome."""
    try:
        client.delete_job(name, namespace=namespace)
    except (RuntimeError, TimeoutError) as e:
        log(f"{label}: could not delete: {e}")
    else:
        log(f"{label}: deleted")
