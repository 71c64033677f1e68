"""``sslcore pipelines submit`` against a fake KFP API on loopback and the real loopback S3 server.

The fake server answers only what ``kfp.Client`` 2.17 asks in this flow (read from kfp/client and
kfp_server_api): ``GET /apis/v2beta1/healthz``, ``GET /apis/v2beta1/experiments?filter=``,
``POST /apis/v2beta1/experiments``, ``POST /apis/v2beta1/runs``, ``GET /apis/v2beta1/runs/<id>``;
anything else is a 404 the test would see. It records every request. A run reports RUNNING on the
first poll, then its final state; on SUCCEEDED it first writes ``<results_uri>/summary.json`` to
S3, as the pipeline's report task would.
"""

import json
import re
import shlex
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from pipelines import runner, submit
from sslcore import cli
from sslcore.storage import read_bytes, write_bytes

PIPELINE = "ssl_pretrain_eval"
WORKFLOW = Path(__file__).parents[2] / "examples" / "ci" / "github-actions-ssl-benchmark.yml"

SUMMARY = {
    "title": "sslcore: pretrain and evaluate",
    "table": "model  benchmark  metric  value\npretrained  knn  top1  78.12 %",
    "rows": [
        {"benchmark": "knn", "model": "pretrained", "records": [
            {"name": "top1", "value": 78.12, "unit": "%", "layer": "res5avg",
             "params": {"k": 200, "T": 0.1}},
            {"name": "top5", "value": 95.0, "unit": "%", "layer": "res5avg",
             "params": {"k": 200, "T": 0.1}},
            {"name": "top1", "value": 74.5, "unit": "%", "layer": "res5avg",
             "params": {"k": 20, "T": 0.07}},
        ]},
        {"benchmark": "linear", "model": "pretrained", "records": [
            {"name": "top1", "value": 81.0, "unit": "%", "layer": "res5avg", "params": {}}]},
        {"benchmark": "knn", "model": "random init", "records": [
            {"name": "top1", "value": 31.0, "unit": "%", "layer": "res5avg",
             "params": {"k": 200, "T": 0.1}}]},
    ],
}


class FakeKfp:
    """The KFP v2beta1 REST endpoints kfp.Client uses to create and follow a run."""

    def __init__(self, final_state="SUCCEEDED", experiments=(), refuse_runs=False):
        self.final_state, self.refuse_runs = final_state, refuse_runs
        self.experiments = [dict(e) for e in experiments]
        self.runs, self.polls, self.requests = {}, {}, []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                fake.answer(self, None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.answer(self, json.loads(body) if body else None)

            def log_message(self, *args):
                pass

        return Handler

    def answer(self, handler, body):
        url = urlparse(handler.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append({"method": handler.command, "path": url.path, "query": query,
                              "body": body})
        status, payload = self.route(handler.command, url.path, query, body)
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def route(self, method, path, query, body):
        if (method, path) == ("GET", "/apis/v2beta1/healthz"):
            return 200, {"multi_user": False}
        if (method, path) == ("GET", "/apis/v2beta1/experiments"):
            wanted = json.loads(query["filter"])["predicates"][0]["stringValue"]
            found = [e for e in self.experiments if e["display_name"] == wanted]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if (method, path) == ("POST", "/apis/v2beta1/experiments"):
            experiment = {**body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments.append(experiment)
            return 200, experiment
        if (method, path) == ("POST", "/apis/v2beta1/runs") and self.refuse_runs:
            return 403, {"code": 7, "message": "user may not create runs in namespace kubeflow"}
        if (method, path) == ("POST", "/apis/v2beta1/runs"):
            run = {**body, "run_id": f"run-{len(self.runs) + 1}", "state": "PENDING"}
            self.runs[run["run_id"]] = run
            return 200, run
        match = re.fullmatch(r"/apis/v2beta1/runs/([\w-]+)", path)
        if method == "GET" and match and match[1] in self.runs:
            return 200, self.poll(self.runs[match[1]])
        return 404, {"code": 5, "message": f"fake KFP: no route {method} {path}"}

    def poll(self, run):
        count = self.polls[run["run_id"]] = self.polls.get(run["run_id"], 0) + 1
        if count == 1:
            return {**run, "state": "RUNNING"}
        if run["state"] == "RUNNING" or run["state"] == "PENDING":
            run["state"] = self.final_state
            if self.final_state == "SUCCEEDED":
                results = run["runtime_config"]["parameters"]["results_uri"]
                write_bytes(f"{results}/summary.json", json.dumps(SUMMARY).encode())
            elif self.final_state == "FAILED":
                run["error"] = {"code": 2, "message": "task 'knn (pretrained)' exited with 1"}
                run["run_details"] = {"task_details": [
                    {"display_name": "knn (pretrained)", "state": "FAILED",
                     "error": {"code": 2, "message": "faiss: out of memory"}}]}
        return run

    def calls(self, method, path):
        return [r for r in self.requests if r["method"] == method and r["path"] == path]

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _no_kfp_context(tmp_path, monkeypatch):
    """Never read the user's ~/.config/kfp/context.json (it could set a namespace)."""
    import kfp

    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "no-kfp-context.json"))
    monkeypatch.delenv("KF_PIPELINES_UI_ENDPOINT", raising=False)
    monkeypatch.delenv("KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME", raising=False)


@pytest.fixture
def kfp_api():
    with FakeKfp() as fake:
        yield fake


def _submit(fake, *extra):
    argv = ["submit", PIPELINE, "--host", fake.url, "--experiment", "ci-benchmarks",
            "--run-name", "nightly 7", "--poll-interval", "0.05", "--timeout", "30",
            "--results-uri", "s3://runs/ci", *extra]
    return runner.main(argv)


@pytest.mark.parametrize("name", sorted(runner.PIPELINES))
def test_every_pipeline_with_a_report_declares_results_uri(name):
    spec = runner.load_pipeline(name).pipeline_spec.root
    declared = spec.input_definitions.parameters
    if "summary" not in spec.output_definitions.artifacts:  # convert: no report to check
        assert "results_uri" not in declared
        return
    assert "results_uri" in declared, (
        f"pipeline {name} lacks the parameter results_uri: str = '' (its report task writes "
        f"<results_uri>/summary.json), which `sslcore pipelines submit` reads back")
    assert declared["results_uri"].default_value.string_value == ""


def test_submit_sends_the_compiled_spec_and_typed_params_then_passes(s3_env, kfp_api, capsys):
    code = cli.main(["pipelines", *(["submit", PIPELINE, "--host", kfp_api.url,
                                     "--experiment", "ci-benchmarks", "--run-name", "nightly 7",
                                     "--poll-interval", "0.05", "--results-uri", "s3://runs/ci",
                                     "--service-account", "sslcore-pipeline-runner",
                                     "--param", "limit_train=512", "--param",
                                     "extra_overrides=config.OPTIMIZER.num_epochs=1",
                                     "--fail-under", "knn.top1@k=200=70",
                                     "--fail-under", "linear.top1=80"])])
    out = capsys.readouterr().out
    assert code == 0, out

    [listed] = kfp_api.calls("GET", "/apis/v2beta1/experiments")
    assert json.loads(listed["query"]["filter"])["predicates"][0]["stringValue"] == "ci-benchmarks"
    [created] = kfp_api.calls("POST", "/apis/v2beta1/experiments")
    assert created["body"]["display_name"] == "ci-benchmarks"
    [run] = kfp_api.calls("POST", "/apis/v2beta1/runs")
    body = run["body"]
    assert body["display_name"] == "nightly 7" and body["experiment_id"] == "exp-1"
    assert body["service_account"] == "sslcore-pipeline-runner"
    assert body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"], "kfp-kubernetes lost"
    # kfp sends {"pipeline_spec", "platform_spec"} when kfp-kubernetes settings exist, else the spec
    spec = body["pipeline_spec"].get("pipeline_spec", body["pipeline_spec"])
    assert spec["pipelineInfo"]["name"] == "ssl-pretrain-eval"
    assert "results_uri" in spec["root"]["inputDefinitions"]["parameters"]
    params = body["runtime_config"]["parameters"]
    assert params == {"limit_train": 512, "extra_overrides": ["config.OPTIMIZER.num_epochs=1"],
                      "results_uri": "s3://runs/ci/nightly-7"}
    assert isinstance(params["limit_train"], int)
    assert len(kfp_api.calls("GET", "/apis/v2beta1/runs/run-1")) == 2

    assert "run id: run-1" in out and f"{kfp_api.url}/#/runs/details/run-1" in out
    assert "run state: RUNNING" in out and "run state: SUCCEEDED" in out
    assert SUMMARY["table"] in out
    assert re.search(r"pretrained/knn\.top1@k=200\s+78\.12 %\s+70\.00 %\s+PASS", out)
    assert re.search(r"pretrained/linear\.top1\s+81\.00 %\s+80\.00 %\s+PASS", out)
    assert json.loads(read_bytes("s3://runs/ci/nightly-7/summary.json")) == SUMMARY


def test_an_existing_experiment_is_reused(s3_env, capsys):
    with FakeKfp(experiments=[{"experiment_id": "exp-42",
                               "display_name": "ci-benchmarks"}]) as fake:
        assert _submit(fake, "--fail-under", "knn.top1@k=200,T=0.1=70") == 0
    assert fake.calls("POST", "/apis/v2beta1/experiments") == []
    [run] = fake.calls("POST", "/apis/v2beta1/runs")
    assert run["body"]["experiment_id"] == "exp-42"
    assert "experiment: ci-benchmarks (exp-42)" in capsys.readouterr().out


def test_a_metric_below_its_threshold_exits_1_and_is_named(s3_env, kfp_api, capsys):
    code = _submit(kfp_api, "--fail-under", "knn.top1=70", "--fail-under", "knn.top1=80",
                   "--fail-under", "random_init/knn.top1=50")
    captured = capsys.readouterr()
    assert code == 1
    assert re.search(r"pretrained/knn\.top1\s+78\.12 %\s+70\.00 %\s+PASS", captured.out)
    assert re.search(r"pretrained/knn\.top1\s+78\.12 %\s+80\.00 %\s+FAIL", captured.out)
    assert re.search(r"random_init/knn\.top1\s+31\.00 %\s+50\.00 %\s+FAIL", captured.out)
    # two pretrained knn top1 records and no @params: the first is checked, and the output says so
    assert ("2 records match; checked the first (layer=res5avg, k=200, T=0.1); pick one with "
            "@k=200,T=0.1 or @k=20,T=0.07") in captured.out
    assert "below threshold or missing: pretrained/knn.top1, random_init/knn.top1" \
        in captured.err


def test_a_missing_metric_exits_1_and_lists_what_exists(s3_env, kfp_api, capsys):
    assert _submit(kfp_api, "--fail-under", "knn.top10=1") == 1
    out = capsys.readouterr().out
    assert re.search(r"pretrained/knn\.top10\s+-\s+1\.00\s+MISSING", out)
    assert "available: pretrained/knn.top1, pretrained/knn.top5" in out


def test_a_failed_run_exits_1_with_its_state_and_error(s3_env, capsys):
    with FakeKfp(final_state="FAILED") as fake:
        assert _submit(fake, "--fail-under", "knn.top1=70") == 1
    captured = capsys.readouterr()
    assert "run run-1 ended FAILED" in captured.err
    assert "run error: task 'knn (pretrained)' exited with 1" in captured.err
    assert "failed task knn (pretrained): faiss: out of memory" in captured.err
    assert re.search(r"pretrained/knn\.top1\s+-\s+70\.00\s+not checked", captured.out)
    assert "no results to check: run FAILED" in captured.out


@pytest.mark.parametrize("final_state, extra, message", [
    ("CANCELED", [], "run run-1 ended CANCELED"),
    ("RUNNING", ["--timeout", "0.3"], "run run-1 is still RUNNING after 0.3 s"),
])
def test_a_canceled_or_endless_run_exits_1(s3_env, final_state, extra, message, capsys):
    with FakeKfp(final_state=final_state) as fake:
        assert _submit(fake, "--fail-under", "knn.top1=70", *extra) == 1
    captured = capsys.readouterr()
    assert message in captured.err and "not checked" in captured.out


@pytest.mark.parametrize("spec, message", [
    ("knn.top1", "expected \\[model/\\]benchmark.metric"),
    ("knn.top1=high", "'high' is not a number"),
    ("knntop1=70", "expected \\[model/\\]benchmark.metric"),
    ("/knn.top1=70", "expected \\[model/\\]benchmark.metric"),
    ("knn.top1@k=70", "key=value pairs separated by commas"),
    ("knn.top1=nan", "finite"),
])
def test_a_bad_spec_exits_2_before_anything_is_submitted(kfp_api, spec, message, capsys):
    assert _submit(kfp_api, "--fail-under", spec) == 2
    assert re.search(message, capsys.readouterr().err)
    assert kfp_api.requests == []


@pytest.mark.parametrize("extra, message", [
    (["--no-wait", "--fail-under", "knn.top1=70"], "drop --no-wait"),
    (["--param", "results_uri=", "--fail-under", "knn.top1=70"], "add --results-uri"),
    (["--param", "limit_train=many"], "expected integer"),
])
def test_other_usage_errors_exit_2(s3_env, kfp_api, extra, message, capsys):
    assert _submit(kfp_api, *extra) == 2
    assert message in capsys.readouterr().err
    assert kfp_api.requests == []


def test_thresholds_on_a_pipeline_without_a_report_are_refused_before_any_request(kfp_api, capsys):
    argv = ["submit", "convert", "--host", kfp_api.url, "--experiment", "x",
            "--param", "checkpoint_uri=s3://runs/r/model.torch", "--fail-under", "knn.top1=70"]
    assert runner.main(argv) == 2
    assert "has no 'results_uri' parameter" in capsys.readouterr().err
    assert kfp_api.requests == []


def test_s3_results_without_s3_settings_are_a_usage_error(kfp_api, monkeypatch, capsys):
    monkeypatch.delenv("SSLCORE_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("SSLCORE_S3_SECRET_FILE", raising=False)
    assert _submit(kfp_api, "--fail-under", "knn.top1=70") == 2
    assert "set SSLCORE_S3_ENDPOINT" in capsys.readouterr().err


def test_a_user_results_uri_wins_and_no_wait_returns_after_creating(kfp_api, capsys):
    assert _submit(kfp_api, "--param", "results_uri=/mnt/results/x", "--no-wait") == 0
    [run] = kfp_api.calls("POST", "/apis/v2beta1/runs")
    assert run["body"]["runtime_config"]["parameters"] == {"results_uri": "/mnt/results/x"}
    assert kfp_api.calls("GET", "/apis/v2beta1/runs/run-1") == []
    assert "run id: run-1" in capsys.readouterr().out


def test_a_refused_run_exits_1_with_the_api_answer(s3_env, capsys):
    with FakeKfp(refuse_runs=True) as fake:
        assert _submit(fake, "--fail-under", "knn.top1=70") == 1
    captured = capsys.readouterr()
    assert "failed: HTTP 403" in captured.err and "may not create runs" in captured.err
    assert "no results to check: no run" in captured.out


def test_an_unreachable_host_exits_1(free_port_url, capsys):
    assert runner.main(["submit", PIPELINE, "--host", free_port_url, "--experiment", "x",
                        "--fail-under", "knn.top1=1", "--param", "results_uri=/tmp/r"]) == 1
    captured = capsys.readouterr()
    assert f"the KFP API at {free_port_url} failed" in captured.err
    assert "not checked" in captured.out


@pytest.fixture
def free_port_url():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("spec, expected", [
    ("knn.top1=70", ("pretrained", "knn", "top1", {}, 70.0)),
    ("random init/linear.top5=12.5", ("random init", "linear", "top5", {}, 12.5)),
    ("knn.top1@k=20,T=0.07=60", ("pretrained", "knn", "top1", {"k": 20, "T": 0.07}, 60.0)),
    ("linear.top1@layer=res4=1e1", ("pretrained", "linear", "top1", {"layer": "res4"}, 10.0)),
])
def test_fail_under_specs_parse(spec, expected):
    t = submit.parse_fail_under(spec)
    assert (t.model, t.benchmark, t.metric, t.params, t.minimum) == expected


def test_params_and_layer_select_the_record():
    pick = submit.check_threshold
    chosen = pick(SUMMARY, submit.parse_fail_under("knn.top1@k=20,T=0.07=70"))
    assert chosen.record["value"] == 74.5 and chosen.passed and chosen.note == ""
    assert pick(SUMMARY, submit.parse_fail_under("linear.top1@layer=res5avg=1")).passed
    assert pick(SUMMARY, submit.parse_fail_under("linear.top1@layer=res4=1")).record is None


def _workflow():
    data = yaml.safe_load(WORKFLOW.read_text())
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads the bare key `on` as true
    steps = [step for job in data["jobs"].values() for step in job["steps"]]
    [submit_step] = [s for s in steps if "sslcore pipelines submit" in s.get("run", "")]
    command = submit_step["run"].replace("\\\n", " ")
    line = next(line for line in command.splitlines() if "sslcore pipelines submit" in line)
    env = {**data.get("env", {}), **next(iter(data["jobs"].values())).get("env", {}),
           **submit_step.get("env", {})}
    line = re.sub(r"\$\{?(\w+)\}?", lambda m: _default_of(env[m[1]]), line)
    words = shlex.split(line.split("|")[0])
    argv = words[words.index("pipelines") + 1:]
    return triggers, argv, env


def _default_of(expression):
    """What a GitHub expression gives with no inputs, vars or secrets: its last quoted fallback."""
    fallbacks = re.findall(r"\|\|\s*'([^']*)'", str(expression))
    return fallbacks[-1] if fallbacks else "secret"


def test_the_ci_workflow_submits_ssl_benchmark_with_thresholds():
    triggers, argv, env = _workflow()
    assert "workflow_dispatch" in triggers and triggers["schedule"][0]["cron"]
    args = runner.build_parser().parse_args(argv)
    assert args.action == "submit" and args.name == "ssl_benchmark"
    assert args.experiment == "ci-benchmarks" and args.results_uri.startswith("s3://")
    assert any(p.startswith("checkpoint_uri=") for p in args.param)
    assert args.fail_under and all(submit.parse_fail_under(s) for s in args.fail_under)
    for var in ("SSLCORE_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[var] == f"${{{{ secrets.{var} }}}}"


def test_the_ci_workflow_params_fit_the_ssl_benchmark_pipeline():
    if "ssl_benchmark" not in runner.PIPELINES:
        pytest.skip("pipeline ssl_benchmark is not registered yet")
    _, argv, _ = _workflow()
    args = runner.build_parser().parse_args(argv)
    pipeline = runner.load_pipeline("ssl_benchmark")
    runner.parse_params(pipeline, args.param)
    assert "results_uri" in pipeline.pipeline_spec.root.input_definitions.parameters
