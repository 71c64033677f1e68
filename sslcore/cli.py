"""The ``sslcore`` command.

    sslcore train config=pretrain/simclr/quick_simclr config.OPTIMIZER.num_epochs=2 +config.NEW_KEY=1
    sslcore train config=... engine_name=extract_features       (same as `sslcore extract ...`)
    sslcore extract config=... config.MODEL.WEIGHTS_INIT.PARAMS_FILE=ckpt.torch
    sslcore clusterfit config=pretrain/clusterfit/quick_cluster_features   (ClusterFit step 1: k-means labels)
    sslcore data prepare fashion_mnist --out DIR
    sslcore benchmark knn --features DIR --out DIR [--layer res5avg]
    sslcore benchmark linear --features DIR --out DIR [--layer res5avg]
    sslcore zoo --data DIR --out DIR [--methods simclr,moco] [--epochs 2]   (the method table)
    sslcore config show config=... [overrides]     print the resolved config
    sslcore config keys [PREFIX]                   every key with its type, default and meaning
    sslcore k8s pytorchjob config=... --nodes 4 --gpus-per-node 8 --image IMG   (YAML for kubectl apply -f)
    sslcore pipelines compile | run NAME | submit NAME --host URL --experiment EXP [--fail-under SPEC]

Errors in user input (config keys, paths, data) print one clear message and exit with code 2
(set SSLCORE_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

log = logging.getLogger("sslcore")


def _split_engine(args: Sequence[str], default: str) -> tuple:
    engine, rest = default, []
    for arg in args:
        if arg.startswith("engine_name="):
            engine = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return engine, rest


def cmd_engine(args: argparse.Namespace, default_engine: str) -> int:
    """`sslcore train|extract`: run an engine with VISSL-style overrides."""
    from sslcore.engine.launcher import run_engine, setup_logging

    setup_logging()
    engine, overrides = _split_engine(args.overrides, default_engine)
    result = run_engine(overrides, engine)
    print(result)
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """`sslcore data prepare NAME --out DIR`."""
    from sslcore.data.prepare import prepare_dataset

    manifest = prepare_dataset(args.name, args.out, limit_train=args.limit_train,
                               limit_test=args.limit_test)
    print(json.dumps({k: v for k, v in manifest.items() if k != "files"}, indent=2))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    """`sslcore benchmark knn|linear --features DIR --out DIR` (either may be ``s3://``)."""
    from sslcore.engine.remote import fetch_dir, push_dir, staging_dir
    from sslcore.report import format_metrics_table
    from sslcore.storage import is_remote

    features, out = fetch_dir(args.features), staging_dir(args.out)
    if args.benchmark == "knn":
        from sslcore.benchmarks.knn import run_knn_benchmark

        metrics = run_knn_benchmark(features, out, layer=args.layer)
    else:
        from sslcore.benchmarks.linear import run_linear_benchmark

        kwargs = {"epochs": args.epochs} if args.epochs else {}
        metrics = run_linear_benchmark(features, out, layer=args.layer, **kwargs)
    if is_remote(args.out):
        push_dir(out, args.out)
    print(format_metrics_table([{**metrics, "model": args.model_name}]))
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    """`sslcore zoo --data DIR --out DIR`: every method, same budget, kNN table (Markdown)."""
    from sslcore.benchmarks.zoo import METHODS, run_zoo
    from sslcore.engine.launcher import setup_logging

    setup_logging()
    methods = [m for m in args.methods.split(",") if m] if args.methods else list(METHODS)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    run_zoo(args.data, args.out, methods=methods, epochs=args.epochs, workers=args.workers,
            device=args.device)
    print((Path(args.out) / "zoo.md").read_text(), end="")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """`sslcore config show|keys`."""
    if args.action == "show":
        from sslcore.config.loader import to_yaml
        from sslcore.engine.launcher import resolve, setup_logging

        setup_logging()
        print(to_yaml(resolve(args.rest)))
        return 0
    from sslcore.config.schema import iter_keys

    prefix = args.rest[0] if args.rest else ""
    for path, key in iter_keys():
        if path.startswith(prefix):
            print(f"config.{path}  ({key.type_name}, default {key.default!r})\n    {key.doc}")
    return 0


def cmd_k8s(args: argparse.Namespace) -> int:
    """`sslcore k8s pytorchjob config=... --nodes N --gpus-per-node G --image IMG`: YAML to stdout."""
    from sslcore.k8s.pytorchjob import render_pytorchjob_yaml

    text = render_pytorchjob_yaml(args.overrides, name=args.name, image=args.image,
                                  nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                                  namespace=args.namespace, secret_name=args.secret or None,
                                  dataset_pvc=args.dataset_pvc or None,
                                  dataset_mount=args.dataset_mount)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text, end="")
    return 0


def cmd_pipelines(args: argparse.Namespace) -> int:
    """`sslcore pipelines compile|run`: delegates to the project's pipelines package."""
    from pipelines import runner

    return runner.main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sslcore`` command."""
    parser = argparse.ArgumentParser(prog="sslcore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, engine in (("train", "train"), ("extract", "extract_features"),
                         ("clusterfit", "extract_cluster")):
        p = sub.add_parser(name, help=f"run the {engine} engine with VISSL-style overrides")
        p.add_argument("overrides", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda a, e=engine: cmd_engine(a, e))
    data = sub.add_parser("data", help="prepare datasets").add_subparsers(dest="action", required=True)
    prep = data.add_parser("prepare", help="write a dataset in disk_folder + disk_filelist layout")
    prep.add_argument("name", help="'fashion_mnist' or a dataset directory to copy and verify")
    prep.add_argument("--out", required=True)
    prep.add_argument("--limit-train", type=int, default=None)
    prep.add_argument("--limit-test", type=int, default=None)
    prep.set_defaults(func=cmd_data_prepare)
    bench = sub.add_parser("benchmark", help="evaluate extracted features")
    bench.add_argument("benchmark", choices=("knn", "linear"))
    bench.add_argument("--features", required=True,
                       help="directory or s3:// prefix of <split>_<layer>_*.npy")
    bench.add_argument("--out", required=True, help="where metrics.json goes (directory or s3://)")
    bench.add_argument("--layer", default="res5avg")
    bench.add_argument("--epochs", type=int, default=None, help="linear only")
    bench.add_argument("--model-name", default="features", help="label in the printed table")
    bench.set_defaults(func=cmd_benchmark)
    conf = sub.add_parser("config", help="show the resolved config or list keys")
    conf.add_argument("action", choices=("show", "keys"))
    conf.add_argument("rest", nargs=argparse.REMAINDER)
    conf.set_defaults(func=cmd_config)
    k8s = sub.add_parser("k8s", help="render Kubernetes resources").add_subparsers(dest="kind", required=True)
    job = k8s.add_parser("pytorchjob", help="a kubeflow.org/v1 PyTorchJob running `sslcore train`")
    job.add_argument("overrides", nargs="*", help="config=... and config.KEY=VALUE overrides")
    job.add_argument("--nodes", type=int, default=1)
    job.add_argument("--gpus-per-node", type=int, default=1)
    job.add_argument("--image", default="ghcr.io/sslcore/sslcore:0.1.0")
    job.add_argument("--name", default="sslcore-pretrain")
    job.add_argument("--namespace", default="default")
    job.add_argument("--secret", default="sslcore-s3", help="Secret with the S3 settings ('' = none)")
    job.add_argument("--dataset-pvc", default="",
                     help="PersistentVolumeClaim with the datasets, mounted read-only ('' = none)")
    job.add_argument("--dataset-mount", default="/datasets", help="where the dataset PVC is mounted")
    job.add_argument("--out", default=None, help="write the YAML here instead of stdout")
    job.set_defaults(func=cmd_k8s)
    zoo = sub.add_parser("zoo", help="pretrain every method on the same budget; kNN table")
    zoo.add_argument("--data", required=True, help="a prepared Fashion-MNIST (subset) directory")
    zoo.add_argument("--out", required=True)
    zoo.add_argument("--methods", default="", help="comma-separated; default: all")
    zoo.add_argument("--epochs", type=int, default=2)
    zoo.add_argument("--workers", type=int, default=0, help="data loader workers")
    zoo.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    zoo.set_defaults(func=cmd_zoo)
    pipes = sub.add_parser("pipelines", help="compile or run the Kubeflow pipelines", add_help=False)
    pipes.add_argument("rest", nargs=argparse.REMAINDER)
    pipes.set_defaults(func=cmd_pipelines)
    return parser


def _storage_error() -> type:
    """sslcore.storage's error class, imported only when an exception is being handled."""
    from sslcore.storage import StorageError

    return StorageError


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the exit code (2 for user errors, with one clear message)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, _storage_error()) as exc:
        if os.environ.get("SSLCORE_DEBUG"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"sslcore: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
