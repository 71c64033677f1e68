"""``sslcore pipelines submit``: run a pipeline on Kubeflow Pipelines and gate CI on its numbers.

    sslcore pipelines submit NAME --host URL --experiment EXP [--param KEY=VALUE ...]
        [--run-name N] [--namespace NS] [--timeout SECONDS] [--no-wait]
        [--results-uri s3://bucket/prefix] [--fail-under SPEC ...]

What it does, in order:

1. Compiles pipeline NAME to IR YAML (as ``compile`` does) and types every ``--param`` by the
   pipeline's declaration (as ``run`` does).
2. Results: a pipeline with a ``results_uri`` parameter writes ``<results_uri>/summary.json``
   from its report task (``{"title", "table", "rows": [{"benchmark", "model", "records":
   [{"name", "value", "unit", "layer", "params"}, ...]}, ...]}``). Unless ``--param
   results_uri=...`` is given, ``--results-uri PREFIX`` sets it to ``PREFIX/<run name>``.
3. Creates the experiment, or reuses the one of that name, and creates the run with
   ``kfp.Client`` (the compiled spec travels inside the run; nothing is uploaded as a pipeline);
   prints the run id and its UI link (``$KF_PIPELINES_UI_ENDPOINT`` or ``--host``).
4. Unless ``--no-wait``: polls the run every ``--poll-interval`` seconds until SUCCEEDED, FAILED,
   SKIPPED or CANCELED, or ``--timeout``.
5. After SUCCEEDED: reads ``summary.json`` through ``sslcore.storage`` (S3 settings from
   ``SSLCORE_S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``), prints its table,
   then checks every ``--fail-under`` and prints the checks.

``--fail-under [model/]benchmark.metric[@key=value,...]=THRESHOLD``, repeatable: the record named
``metric`` of benchmark ``benchmark`` for ``model`` (default ``pretrained``; ``random_init`` matches
``random init``) must be >= THRESHOLD, e.g. ``knn.top1=70``, ``linear.top1@layer=res5avg=60``,
``random_init/knn.top5@k=20,T=0.07=30``. ``@`` pairs select among records by their protocol
parameters (and ``layer``); without them the first matching record is checked, and the output says
which one.

Exit codes: 0 the run succeeded and every threshold holds (or ``--no-wait``); 1 a threshold fails,
a metric is missing, the run ended in another state than SUCCEEDED, timed out, or the KFP API or
the results could not be reached; 2 a usage error (before anything is submitted).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from pipelines.runner import UsageError, compile_pipeline, load_pipeline, parse_params

DEFAULT_MODEL = "pretrained"
RESULTS_PARAM = "results_uri"
SUMMARY_FILE = "summary.json"
FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")
SPEC_FORMAT = "[model/]benchmark.metric[@key=value,...]=THRESHOLD, e.g. knn.top1=70"


class RunTimeout(RuntimeError):
    """The run did not reach a final state within ``--timeout``."""


@dataclass(frozen=True)
class Threshold:
    """One ``--fail-under`` check: ``model/benchmark.metric@params`` must be >= ``minimum``."""

    spec: str
    model: str
    benchmark: str
    metric: str
    params: Dict[str, Any] = field(default_factory=dict)
    minimum: float = 0.0

    @property
    def target(self) -> str:
        """The checked metric as written back to the user: ``pretrained/knn.top1@k=20``."""
        at = "@" + ",".join(f"{k}={v}" for k, v in self.params.items()) if self.params else ""
        return f"{self.model}/{self.benchmark}.{self.metric}{at}"


@dataclass
class Check:
    """The outcome of one threshold: the record checked (None: missing or not run) and a note."""

    threshold: Threshold
    record: Optional[Dict[str, Any]] = None
    note: str = ""

    @property
    def passed(self) -> bool:
        """Whether a record was found and its value is at least the threshold."""
        return self.record is not None and float(self.record["value"]) >= self.threshold.minimum


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_fail_under(spec: str) -> Threshold:
    """Parse one ``--fail-under`` SPEC: ``[model/]benchmark.metric[@key=value,...]=THRESHOLD``.

    Args:
        spec: e.g. ``"knn.top1=70"``, ``"random_init/knn.top1@k=20,T=0.07=30"``. The threshold
            follows the last ``=``; ``@`` values are JSON scalars when they parse as such
            (``20`` -> int, ``true`` -> bool), else strings.

    Returns:
        The threshold; ``model`` defaults to ``"pretrained"``.

    Raises:
        UsageError: the SPEC does not have that shape, or the threshold is not a finite number.
    """
    head, sep, text = spec.rpartition("=")
    bad = f"--fail-under {spec}: expected {SPEC_FORMAT}"
    if not sep or not head:
        raise UsageError(bad)
    try:
        minimum = float(text)
    except ValueError:
        raise UsageError(f"{bad} (the threshold {text!r} is not a number)") from None
    if not math.isfinite(minimum):
        raise UsageError(f"{bad} (the threshold must be a finite number)")
    target, at, param_text = head.partition("@")
    model, slash, bench_metric = target.rpartition("/")
    benchmark, dot, metric = bench_metric.partition(".")
    if (slash and not model.strip()) or not (benchmark.strip() and dot and metric.strip()):
        raise UsageError(bad)
    params: Dict[str, Any] = {}
    for item in param_text.split(",") if at else []:
        key, eq, value = item.partition("=")
        if not (eq and key.strip() and value.strip()):
            raise UsageError(f"{bad} (after '@' give key=value pairs separated by commas, "
                             f"e.g. @k=20,T=0.07)")
        params[key.strip()] = _scalar(value.strip())
    return Threshold(spec=spec, model=model.strip() if slash else DEFAULT_MODEL,
                     benchmark=benchmark.strip(), metric=metric.strip(), params=params,
                     minimum=minimum)


def _fold(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", str(name).strip().lower())


def _same(wanted: Any, got: Any) -> bool:
    numbers = (int, float)
    if isinstance(wanted, numbers) and isinstance(got, numbers) \
            and not isinstance(wanted, bool) and not isinstance(got, bool):
        return math.isclose(float(wanted), float(got), rel_tol=1e-9, abs_tol=1e-12)
    return wanted == got or str(wanted) == str(got)


def _matches(record: Dict[str, Any], params: Dict[str, Any]) -> bool:
    for key, wanted in params.items():
        record_params = record.get("params") or {}
        if key in record_params:
            got = record_params[key]
        elif key == "layer":
            got = record.get("layer")
        else:
            return False
        if not _same(wanted, got):
            return False
    return True


def _describe(record: Dict[str, Any]) -> str:
    from sslcore.report.table import format_params

    return f"layer={record.get('layer', '')}, {format_params(record.get('params') or {})}"


def _selector(record: Dict[str, Any]) -> str:
    params = record.get("params") or {}
    shown = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in params.items()]
    return ",".join(shown) or f"layer={record.get('layer', '')}"


def check_threshold(summary: Dict[str, Any], threshold: Threshold) -> Check:
    """Find the record a threshold names in a ``summary.json`` dict and judge it.

    Args:
        summary: ``{"rows": [{"benchmark", "model", "records": [{"name", "value", "unit",
            "layer", "params"}, ...]}, ...]}``.
        threshold: from :func:`parse_fail_under`.

    Returns:
        A :class:`Check`; its ``note`` lists the available metrics when none matches, and says
        which record was taken when several match.
    """
    rows = summary.get("rows") or []
    found = [record for row in rows
             if _fold(row.get("model", "")) == _fold(threshold.model)
             and row.get("benchmark") == threshold.benchmark
             for record in row.get("records") or []
             if record.get("name") == threshold.metric and _matches(record, threshold.params)]
    if not found:
        available = sorted({f"{row.get('model')}/{row.get('benchmark')}.{record.get('name')}"
                            for row in rows for record in row.get("records") or []})
        return Check(threshold, note=f"{threshold.target}: not in the results; available: "
                                     f"{', '.join(available) or 'none'}")
    note = ""
    if len(found) > 1:
        choices = " or ".join(f"@{_selector(record)}" for record in found[:4])
        note = (f"{threshold.target}: {len(found)} records match; checked the first "
                f"({_describe(found[0])}); pick one with {choices}")
    return Check(threshold, record=found[0], note=note)


def format_checks(checks: Sequence[Check], not_run: str = "") -> str:
    """The checks as a text table: metric, value, threshold, result; then the notes.

    Args:
        checks: from :func:`check_threshold` (or bare ``Check(threshold)`` when nothing ran).
        not_run: when set, the reason no value exists (e.g. ``"run FAILED"``); every row
            then reads ``not checked``.

    Returns:
        The text (several lines, no trailing newline).
    """
    from sslcore.report.table import format_value

    lines = [("metric", "value", "threshold", "result")]
    for check in checks:
        record, unit = check.record, (check.record or {}).get("unit", "")
        value = format_value(record["value"], unit) if record else "-"
        result = ("not checked" if not_run else "PASS" if check.passed
                  else "FAIL" if record else "MISSING")
        lines.append((check.threshold.target, value,
                      format_value(check.threshold.minimum, unit), result))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    text += [f"note: {check.note}" for check in checks if check.note and not not_run]
    if not_run:
        text.append(f"note: no results to check: {not_run}")
    return "\n".join(text)


def resolve_results_uri(pipeline: Any, params: Dict[str, Any], prefix: Optional[str],
                        run_name: str, need_results: bool) -> str:
    """Choose the pipeline's ``results_uri`` argument and add it to ``params``.

    Args:
        pipeline: the pipeline function (its declaration says whether it has ``results_uri``).
        params: the typed ``--param`` arguments; updated in place.
        prefix: ``--results-uri`` (a local path or ``s3://bucket/prefix``), or None.
        run_name: the run's name; its ``[A-Za-z0-9._-]`` form ends the default URI.
        need_results: whether ``--fail-under`` checks must read the results.

    Returns:
        The URI (``""`` when the run writes no results).

    Raises:
        UsageError: results are needed or a prefix was given but the pipeline declares no
            ``results_uri``; results are needed but no URI is set; an ``s3://`` URI without S3
            settings in the environment.
    """
    declared = pipeline.pipeline_spec.root.input_definitions.parameters
    if RESULTS_PARAM not in declared:
        if need_results or prefix:
            raise UsageError(f"pipeline {pipeline.name} has no '{RESULTS_PARAM}' parameter, so its "
                             f"results cannot be read back; drop --results-uri and --fail-under")
        return ""
    if RESULTS_PARAM not in params and prefix:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", run_name).strip("-") or "run"
        params[RESULTS_PARAM] = f"{prefix.rstrip('/')}/{slug}"
    uri = str(params.get(RESULTS_PARAM, ""))
    if need_results and not uri:
        raise UsageError("--fail-under needs the run's results: add --results-uri "
                         "s3://bucket/prefix (or --param results_uri=...)")
    if uri.startswith("s3://"):
        from sslcore.storage import load_s3_settings

        try:
            load_s3_settings()
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError(f"results go to {uri}, but {exc}") from None
    return uri


def connect(host: str, namespace: Optional[str]) -> Any:
    """A ``kfp.Client`` for ``host`` (e.g. ``http://127.0.0.1:8888``), in ``namespace`` if given.

    Raises:
        UsageError: ``host`` lacks the ``http://`` or ``https://`` scheme.
        kfp_server_api.ApiException, urllib3.exceptions.HTTPError: the API does not answer.
    """
    from kfp import Client

    if not re.match(r"^https?://[^/]", host):
        raise UsageError(f"--host {host}: give the scheme, e.g. https://kfp.example.com or "
                         f"http://127.0.0.1:8888")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*only works with Kubeflow Pipeline.*",
                                category=FutureWarning)
        return Client(host=host, **({"namespace": namespace} if namespace else {}))


def create_run(client: Any, package: Path, params: Dict[str, Any], run_name: str,
               experiment: str, namespace: Optional[str],
               service_account: Optional[str] = None) -> Any:
    """Create (or reuse) experiment ``experiment`` and start a run of the compiled ``package``.

    Returns:
        The created ``V2beta1Run`` (``run_id``, ``experiment_id``).

    Raises:
        kfp_server_api.ApiException: the API refused a request.
        RuntimeError: several experiments have that name.
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # kfp prints its links; we print ours
            result = client.create_run_from_pipeline_package(
                str(package), arguments=params, run_name=run_name, experiment_name=experiment,
                namespace=namespace, service_account=service_account)
    except ValueError as exc:  # kfp's get_experiment: "Multiple experiments is found ..."
        raise RuntimeError(f"{exc} Rename or archive the duplicates, or pick another "
                           f"--experiment") from None
    return result.run_info


def wait_for_run(client: Any, run_id: str, timeout_s: float, poll_s: float) -> Any:
    """Poll the run until it reaches a state of :data:`FINAL_STATES`; print each new state.

    Unlike ``kfp.Client.wait_for_run_completion``, CANCELED counts as final.

    Args:
        timeout_s: seconds to wait; 0 waits without limit.
        poll_s: seconds between polls.

    Returns:
        The final ``V2beta1Run``.

    Raises:
        RunTimeout: still not final after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else math.inf
    last = None
    while True:
        run = client.get_run(run_id)
        state = str(run.state or "PENDING").upper()
        if state != last:
            print(f"run state: {state}", flush=True)
            last = state
        if state in FINAL_STATES:
            return run
        left = deadline - time.monotonic()
        if left <= 0:
            raise RunTimeout(f"run {run_id} is still {state} after {timeout_s:g} s; it goes on in "
                             f"KFP: raise --timeout, or follow it in the UI")
        time.sleep(min(poll_s, left))


def describe_failure(run: Any) -> List[str]:
    """The run's own error message and each failed task's, as lines for the log."""
    lines = []
    if run.error is not None and run.error.message:
        lines.append(f"run error: {run.error.message}")
    for task in (run.run_details.task_details or []) if run.run_details else []:
        if str(task.state or "").upper() == "FAILED":
            message = task.error.message if task.error is not None else ""
            lines.append(f"failed task {task.display_name}: {message or '(no message)'}")
    return lines


def read_summary(results_uri: str) -> Dict[str, Any]:
    """Read ``<results_uri>/summary.json`` through ``sslcore.storage``.

    Raises:
        RuntimeError: the file is missing or not a JSON object (the message names the URI).
        StorageError: remote failure.
    """
    from sslcore.storage import join_uri, read_bytes

    uri = join_uri(results_uri, SUMMARY_FILE)
    try:
        summary = json.loads(read_bytes(uri))
    except FileNotFoundError:
        raise RuntimeError(f"the run succeeded but wrote no {uri}: does its report task write "
                           f"<{RESULTS_PARAM}>/{SUMMARY_FILE}?") from None
    except ValueError as exc:
        raise RuntimeError(f"{uri} is not JSON: {exc}") from None
    if not isinstance(summary, dict):
        raise RuntimeError(f"{uri} must hold a JSON object with 'rows'")
    return summary


def _report(checks: Sequence[Check], not_run: str = "") -> None:
    if checks:
        print(f"\n{format_checks(checks, not_run=not_run)}", flush=True)


def _submit_and_wait(args: argparse.Namespace, params: Dict[str, Any], run_name: str,
                     results_uri: str) -> Any:
    client = connect(args.host, args.namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(args.name, Path(tmp) / f"{args.name}.yaml")
        run = create_run(client, package, params, run_name, args.experiment, args.namespace,
                         args.service_account)
    ui = os.environ.get("KF_PIPELINES_UI_ENDPOINT") or args.host
    print(f"experiment: {args.experiment} ({run.experiment_id})")
    print(f"run: {run_name}\nrun id: {run.run_id}\n"
          f"run link: {ui.rstrip('/')}/#/runs/details/{run.run_id}", flush=True)
    if results_uri:
        print(f"results: {results_uri.rstrip('/')}/{SUMMARY_FILE}", flush=True)
    if args.no_wait:
        return None
    return wait_for_run(client, run.run_id, args.timeout, args.poll_interval)


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit, wait and check, as the module docstring describes; returns the exit code.

    Raises:
        UsageError: bad arguments, found before anything is submitted (exit 2).
    """
    from kfp_server_api import ApiException
    from urllib3.exceptions import HTTPError

    from sslcore.storage import StorageError

    thresholds = [parse_fail_under(spec) for spec in args.fail_under]
    if thresholds and args.no_wait:
        raise UsageError("--fail-under needs the run to finish: drop --no-wait")
    if args.timeout < 0 or args.poll_interval <= 0:
        raise UsageError("--timeout must be >= 0 (0: no limit) and --poll-interval > 0")
    pipeline = load_pipeline(args.name)
    params = parse_params(pipeline, args.param)
    run_name = args.run_name or f"{args.name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    results_uri = resolve_results_uri(pipeline, params, args.results_uri, run_name,
                                      need_results=bool(thresholds))
    checks = [Check(t) for t in thresholds]
    try:
        run = _submit_and_wait(args, params, run_name, results_uri)
    except (ApiException, HTTPError) as exc:
        if isinstance(exc, ApiException):
            exc = f"HTTP {exc.status} {exc.reason}: {str(exc.body or '')[:500]}"
        print(f"sslcore pipelines submit: the KFP API at {args.host} failed: {exc}; check --host, "
              f"--namespace and that {args.host}/apis/v2beta1/healthz answers", file=sys.stderr)
        _report(checks, not_run="no run")
        return 1
    except RuntimeError as exc:
        print(f"sslcore pipelines submit: {exc}", file=sys.stderr)
        _report(checks, not_run="timed out" if isinstance(exc, RunTimeout) else "no run")
        return 1
    if run is None:  # --no-wait
        return 0
    state = str(run.state).upper()
    if state != "SUCCEEDED":
        print(f"sslcore pipelines submit: run {run.run_id} ended {state}", file=sys.stderr)
        for line in describe_failure(run):
            print(line, file=sys.stderr)
        _report(checks, not_run=f"run {state}")
        return 1
    if not results_uri:
        return 0
    try:
        summary = read_summary(results_uri)
    except (RuntimeError, StorageError) as exc:
        print(f"sslcore pipelines submit: {exc}", file=sys.stderr)
        _report(checks, not_run="results unreadable")
        return 1
    if summary.get("table"):
        print(summary["table"])
    checks = [check_threshold(summary, t) for t in thresholds]
    _report(checks)
    failed = [c.threshold.target for c in checks if not c.passed]
    if failed:
        print(f"sslcore pipelines submit: below threshold or missing: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


def add_submit_parser(sub: Any) -> None:
    """Register ``submit`` on the ``sslcore pipelines`` subparsers ``sub``."""
    parser = sub.add_parser("submit", help="run a pipeline on Kubeflow Pipelines; check results",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the pipeline (see `sslcore pipelines list`)")
    parser.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kfp.example.com")
    parser.add_argument("--experiment", required=True, help="experiment name; created if missing")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a pipeline parameter, typed as for `run`; repeat for several")
    parser.add_argument("--run-name", default=None, help="default <name>-<UTC timestamp>")
    parser.add_argument("--namespace", default=None, help="namespace of multi-user deployments")
    parser.add_argument("--service-account", default=None,
                        help="the run's pods' ServiceAccount, e.g. sslcore-pipeline-runner (needed "
                             "when pretraining creates a PyTorchJob)")
    parser.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                        help="give up waiting after this long (exit 1); 0: no limit (default)")
    parser.add_argument("--poll-interval", type=float, default=5.0, metavar="SECONDS",
                        help="seconds between run state polls (default 5)")
    parser.add_argument("--no-wait", action="store_true", help="exit 0 once the run is created")
    parser.add_argument("--results-uri", default=None, metavar="URI",
                        help="prefix for results; the run writes <URI>/<run name>/summary.json")
    parser.add_argument("--fail-under", action="append", default=[], metavar="SPEC",
                        help=f"exit 1 if a metric is below: {SPEC_FORMAT}; repeatable")
