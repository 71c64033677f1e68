"""``sslcore pipelines compile|run``: keep the compiled YAML current and run pipelines locally.

    sslcore pipelines list
    sslcore pipelines compile [--check] | compile --image REGISTRY/sslcore:TAG --out-dir DIR
    sslcore pipelines run NAME [--run-dir DIR] [--param KEY=VALUE ...]
    sslcore pipelines submit NAME --host URL --experiment EXP [--fail-under SPEC ...]  (submit.py)

``compile`` writes each pipeline's IR YAML beside its source (``pipelines/<name>.yaml``);
``--check`` writes nothing and exits 1 when a checked-in YAML differs from a fresh compile
(``sdkVersion`` ignored), for CI.

``run`` executes the pipeline through ``kfp.local`` with ``SubprocessRunner(use_venv=False)``:
every task runs as a subprocess of this Python environment, with no cluster, Docker or network.
Artifacts go under ``<run-dir>/pipeline_root/<pipeline>-<timestamp>/<task>/<output>``. Calling a
pipeline function after ``kfp.local.init`` runs it and returns a task whose ``.outputs`` maps the
pipeline's declared outputs to artifacts; a pipeline that returns ``summary`` (a directory with
``summary.json``: ``table`` and ``rows``) and ``report`` (an HTML file) gets its table printed, the
report copied to ``<run-dir>/report.html``, and everything recorded in ``<run-dir>/results.json``.

``--param`` values are typed by the pipeline's parameter declaration: ints, floats, booleans
(``true``/``false``), JSON for dicts; a list parameter takes a JSON list, or one item per repeated
``--param``, e.g. ``--param extra_overrides=config.OPTIMIZER.num_epochs=1 --param
extra_overrides=config.DATA.TRAIN.BATCHSIZE_PER_REPLICA=64``.
"""

import argparse
import difflib
import importlib
import json
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from pipelines.console import progress_only

# pipeline name -> module that defines a pipeline function of the same name
PIPELINES: Dict[str, str] = {
    "ssl_pretrain_eval": "pipelines.ssl_pretrain_eval",
    "ssl_benchmark": "pipelines.ssl_benchmark",
    "clusterfit": "pipelines.clusterfit",
    "convert": "pipelines.convert",
}

_VERSION_LINE = re.compile(r"^sdkVersion: .*$", re.MULTILINE)


class UsageError(ValueError):
    """A command-line mistake: unknown pipeline or parameter, or a value of the wrong type."""


def load_pipeline(name: str) -> Any:
    """The pipeline function (a kfp GraphComponent) registered as ``name``.

    Raises:
        UsageError: if no pipeline has that name (the message lists them).
    """
    if name not in PIPELINES:
        close = difflib.get_close_matches(name, list(PIPELINES), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown pipeline '{name}'; pipelines: {', '.join(PIPELINES)}.{hint}")
    return getattr(importlib.import_module(PIPELINES[name]), name)


def yaml_path(name: str) -> Path:
    """Where the compiled YAML of pipeline ``name`` is checked in: beside its source."""
    module = importlib.import_module(PIPELINES[name])
    return Path(module.__file__).with_suffix(".yaml")


def strip_versions(text: str) -> str:
    """Compiled YAML without the line that names the kfp version that wrote it."""
    return _VERSION_LINE.sub("sdkVersion: <stripped>", text)


def compile_pipeline(name: str, out: Path) -> Path:
    """Compile pipeline ``name`` to the IR YAML file ``out``."""
    from kfp import compiler

    compiler.Compiler().compile(load_pipeline(name), str(out))
    return out


def compile_for_registry(out_dir: Path, image: str) -> List[Path]:
    """Compile every pipeline into ``out_dir`` with the component image replaced by ``image``.

    For clusters that pull the sslcore image from their own registry (``make push-images
    IMAGE=...``); the checked-in YAML keeps the default image.

    Raises:
        UsageError: ``image`` is empty or has no tag.
    """
    from components import SSLCORE_IMAGE

    if not image or ":" not in image.rsplit("/", 1)[-1]:
        raise UsageError(f"--image needs a tagged image, e.g. registry.example.com/sslcore:0.1.0; "
                         f"got {image!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PIPELINES:
        target = out_dir / yaml_path(name).name
        text = compile_pipeline(name, target).read_text()
        target.write_text(text.replace(SSLCORE_IMAGE, image))
        written.append(target)
        print(f"compiled {name} -> {target} (image {image})")
    return written


def cmd_compile(check: bool, image: Optional[str] = None, out_dir: Optional[str] = None) -> int:
    """Compile every pipeline beside its source; with ``check``, report stale YAML instead.

    With ``image`` (and ``out_dir``), compile for another registry instead
    (:func:`compile_for_registry`).
    """
    if image or out_dir:
        if not (image and out_dir) or check:
            raise UsageError("--image and --out-dir go together, without --check")
        compile_for_registry(Path(out_dir), image)
        return 0
    stale = []
    for name in PIPELINES:
        target = yaml_path(name)
        if not check:
            compile_pipeline(name, target)
            print(f"compiled {name} -> {target}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            fresh = compile_pipeline(name, Path(tmp) / target.name).read_text()
        current = target.read_text() if target.exists() else ""
        if strip_versions(fresh) != strip_versions(current):
            stale.append(str(target))
    if stale:
        print("stale compiled pipelines (run `sslcore pipelines compile`): " + ", ".join(stale),
              file=sys.stderr)
        return 1
    if check:
        print(f"all {len(PIPELINES)} compiled pipelines are current")
    return 0


def _convert(name: str, kind: str, text: str) -> Any:
    try:
        if kind == "NUMBER_INTEGER":
            return int(text)
        if kind == "NUMBER_DOUBLE":
            return float(text)
        if kind == "BOOLEAN":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if kind == "STRUCT":
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError(text)
            return value
    except ValueError:
        expected = kind.lower().replace("number_", "")
        raise UsageError(f"--param {name}={text}: expected {expected}") from None
    return text


def parse_params(pipeline: Any, pairs: Sequence[str]) -> Dict[str, Any]:
    """Turn ``KEY=VALUE`` strings into typed pipeline arguments.

    Args:
        pipeline: the pipeline function (its parameter declarations give the types).
        pairs: e.g. ``["limit_train=512", "extra_overrides=config.OPTIMIZER.num_epochs=1"]``.

    Returns:
        ``{name: value}``; a list parameter collects one item per pair (or takes a JSON list).

    Raises:
        UsageError: a pair without ``=``, an unknown parameter, or a value of the wrong type.
    """
    from kfp.pipeline_spec import pipeline_spec_pb2

    declared = pipeline.pipeline_spec.root.input_definitions.parameters
    type_name = pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name
    params: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise UsageError(f"--param {pair}: expected KEY=VALUE")
        if key not in declared:
            raise UsageError(f"--param {key}: {pipeline.name} has no such parameter; parameters: "
                             f"{', '.join(sorted(declared))}")
        kind = type_name(declared[key].parameter_type)
        if kind != "LIST":
            params[key] = _convert(key, kind, text)
            continue
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        params.setdefault(key, [])
        params[key] += value if isinstance(value, list) else [text]
    return params


def pipeline_defaults(pipeline: Any) -> Dict[str, Any]:
    """The declared default of each pipeline parameter that has one, typed as by parse_params."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    integer = pipeline_spec_pb2.ParameterType.NUMBER_INTEGER
    defaults = {}
    for key, spec in pipeline.pipeline_spec.root.input_definitions.parameters.items():
        if spec.HasField("default_value"):
            value = json_format.MessageToDict(spec.default_value)
            defaults[key] = int(value) if spec.parameter_type == integer else value
    return defaults


def run_pipeline(name: str, run_dir: Path, params: Dict[str, Any], *,
                 verbose: bool = False) -> Dict[str, Any]:
    """Run pipeline ``name`` locally; write ``<run_dir>/results.json`` and return its content.

    Raises:
        RuntimeError: if a task fails (kfp.local names it; its log is above).
    """
    from kfp import local

    pipeline = load_pipeline(name)
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(run_dir / "pipeline_root"), raise_on_error=True)
    with warnings.catch_warnings():
        # expected locally: the subprocess runner uses neither the sslcore image the components
        # name nor the display names the KFP UI shows
        warnings.filterwarnings("ignore", message=".*non-Python base image.*",
                                category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*",
                                category=UserWarning)
        with progress_only(run_dir / "pipeline.log", verbose=verbose):
            task = pipeline(**params)
    outputs = {key: artifact.path for key, artifact in task.outputs.items()}
    results: Dict[str, Any] = {"pipeline": name,
                               "parameters": {**pipeline_defaults(pipeline), **params},
                               "pipeline_root": str(run_dir / "pipeline_root"), "outputs": outputs}
    if "summary" in outputs:
        summary = json.loads((Path(outputs["summary"]) / "summary.json").read_text())
        results.update(table=summary.get("table", ""), rows=summary.get("rows", []))
    if "report" in outputs:
        report = run_dir / "report.html"
        shutil.copyfile(outputs["report"], report)
        results["report_html"] = str(report)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def cmd_run(name: str, run_dir: Optional[str], pairs: Sequence[str], verbose: bool = False) -> int:
    """Run one pipeline locally and print what a person needs: the table and where things are."""
    from sslcore.report import format_headline_table

    params = parse_params(load_pipeline(name), pairs)
    results = run_pipeline(name, Path(run_dir or f"runs/{name}"), params, verbose=verbose)
    print()
    if results.get("table"):
        print(results["table"])
        print()
    if results.get("rows"):
        print(format_headline_table(results["rows"]))
        print()
    for key, path in results["outputs"].items():
        print(f"{key}: {path}")
    if "report_html" in results:
        print(f"HTML report: {results['report_html']}")
    print(f"results: {Path(results['pipeline_root']).parent / 'results.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``sslcore pipelines``."""
    parser = argparse.ArgumentParser(prog="sslcore pipelines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the pipelines and their compiled YAML")
    comp = sub.add_parser("compile", help="recompile every pipeline's YAML beside its source")
    comp.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 if a checked-in YAML is stale")
    comp.add_argument("--image", default=None,
                      help="compile for your registry: this image instead of the default one "
                           "(with --out-dir; the checked-in YAML is left alone)")
    comp.add_argument("--out-dir", default=None, help="where --image writes the YAML files")
    run = sub.add_parser("run", help="run a pipeline locally through kfp.local")
    run.add_argument("name", help=f"one of: {', '.join(PIPELINES)}")
    run.add_argument("--run-dir", default=None, help="where artifacts and results.json go "
                                                     "(default runs/<name>)")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="a pipeline parameter; repeat for several (and for list items)")
    run.add_argument("--verbose", action="store_true",
                     help="echo every task's full log, not only progress lines")
    from pipelines.submit import add_submit_parser

    add_submit_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``sslcore pipelines``; returns the exit code (2 for usage errors)."""
    args = build_parser().parse_args(argv)
    try:
        if args.action == "list":
            for name in PIPELINES:
                print(f"{name}  {yaml_path(name)}")
            return 0
        if args.action == "compile":
            return cmd_compile(args.check, args.image, args.out_dir)
        if args.action == "submit":
            from pipelines.submit import cmd_submit

            return cmd_submit(args)
        return cmd_run(args.name, args.run_dir, args.param, args.verbose)
    except UsageError as exc:
        print(f"sslcore pipelines: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"sslcore pipelines: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
