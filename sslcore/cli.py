"""The ``sslcore`` command.

    sslcore train config=pretrain/simclr/quick_simclr config.OPTIMIZER.num_epochs=2 +config.NEW_KEY=1
    sslcore train config=... engine_name=extract_features       (same as `sslcore extract ...`)
    sslcore extract config=... config.MODEL.WEIGHTS_INIT.PARAMS_FILE=ckpt.torch
    sslcore clusterfit config=pretrain/clusterfit/quick_cluster_features   (ClusterFit step 1: k-means labels)
    sslcore data prepare fashion_mnist --out DIR
    sslcore data prepare fashion_mnist_scenes --out DIR [--limit-train N] [--canvas-size 96] [--seed 0]
    sslcore data subset --data DIR --split train (--fraction 0.01 | --per-class 5) --seed 0 --out DIR
    sslcore benchmark knn --features DIR --out DIR [--layer res5avg]
    sslcore benchmark linear --features DIR --out DIR [--layer res5avg]
    sslcore benchmark retrieval --data DIR --out DIR (--checkpoint CKPT | --random-init) [--descriptor gem|rmac] [--whiten]
    sslcore benchmark retrieval --revisited-root DIR --dataset roxford5k --out DIR ... [--allow-pickle]
    sslcore benchmark clusterfit --features DIR --out DIR --num-clusters K   (ClusterFit step 1 as a stage)
    sslcore benchmark svm --features DIR --out DIR --layer L [--layer L2 ...] [--n-jobs 2]   (VOC07 SVM)
    sslcore benchmark low_shot --features DIR --out DIR --layer L [--k-values 1,8,96] [--samples 5] [--seed 0]
    sslcore benchmark finetune --data DIR --out DIR [--checkpoint CKPT] --mode linear|fulltune|semi_supervised [--fraction 0.01] [--epochs N]
    sslcore benchmark detection --data VOCROOT --out DIR (--checkpoint CKPT | --random-init) [--iterations 300]   (Faster R-CNN)
    sslcore zoo --data DIR --out DIR [--methods simclr,moco] [--epochs 2]   (the method table)
    sslcore config show config=... [overrides]     print the resolved config
    sslcore config keys [PREFIX]                   every key with its type, default and meaning
    sslcore k8s pytorchjob config=... --nodes 4 --gpus-per-node 8 --image IMG   (YAML for kubectl apply -f)
    sslcore pipelines compile | run NAME | submit NAME --host URL --experiment EXP [--fail-under SPEC]
    sslcore convert --from sslcore --to torchvision|detectron2|classy_vision|sslcore IN OUT
    sslcore convert --from torchvision|timm|classy_vision|caffe2 --to sslcore IN OUT [--allow-pickle]

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

    options = {k: v for k, v in (("canvas_size", args.canvas_size), ("seed", args.seed)) if v is not None}
    if options and args.name != "fashion_mnist_scenes":
        raise ValueError(f"--canvas-size/--seed apply to fashion_mnist_scenes only, not to '{args.name}'")
    manifest = prepare_dataset(args.name, args.out, limit_train=args.limit_train,
                               limit_test=args.limit_test, options=options)
    print(json.dumps({k: v for k, v in manifest.items() if k != "files"}, indent=2))
    return 0


def cmd_data_subset(args: argparse.Namespace) -> int:
    """`sslcore data subset --data DIR --split train (--fraction F | --per-class K) --seed S --out DIR`."""
    import numpy as np

    from sslcore.data.subsets import sample_fraction_per_class, sample_per_class, write_subset

    labels_path = Path(args.data) / f"{args.split}_labels.npy"
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path} does not exist; --data must be a disk_filelist dataset "
                                "(e.g. from `sslcore data prepare`)")
    labels = np.load(labels_path, allow_pickle=False)
    if args.fraction is not None:
        indices = sample_fraction_per_class(labels, args.fraction, seed=args.seed)
        description = {"fraction": args.fraction}
    else:
        indices = sample_per_class(labels, args.per_class, seed=args.seed)
        description = {"per_class": args.per_class}
    record = write_subset(args.data, args.split, indices, args.out, seed=args.seed, description=description)
    print(f"{len(indices)} of {len(labels)} {args.split} samples -> {args.out} ({record.name})")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    """`sslcore benchmark knn|linear|svm|low_shot --features DIR --out DIR` (either may be ``s3://``)."""
    from sslcore.engine.remote import fetch_dir, push_dir, staging_dir
    from sslcore.report import format_metrics_table
    from sslcore.storage import is_remote

    layers = args.layer or []
    if len(layers) > 1 and args.benchmark != "svm":
        raise ValueError(f"--layer was given {len(layers)} times; only `sslcore benchmark svm` takes several "
                         "layers, run the others once per layer")
    args.layer = layers[0] if layers else None
    if args.benchmark == "finetune":
        return _cmd_finetune(args)
    if args.benchmark == "detection":
        return _cmd_detection(args)
    if args.benchmark in ("retrieval", "clusterfit"):
        return _cmd_retrieval(args) if args.benchmark == "retrieval" else _cmd_clusterfit(args)
    if not args.features:
        raise ValueError(f"`sslcore benchmark {args.benchmark}` needs --features DIR (extracted features)")
    args.layer = args.layer or "res5avg"
    features, out = fetch_dir(args.features), staging_dir(args.out)
    if args.benchmark == "knn":
        from sslcore.benchmarks.knn import run_knn_benchmark

        metrics = run_knn_benchmark(features, out, layer=args.layer)
    elif args.benchmark in ("svm", "low_shot"):
        metrics = _run_svm_or_low_shot(args, features, out, layers or [args.layer])
    else:
        from sslcore.benchmarks.linear import run_linear_benchmark

        kwargs = {"epochs": args.epochs} if args.epochs else {}
        metrics = run_linear_benchmark(features, out, layer=args.layer, **kwargs)
    if is_remote(args.out):
        push_dir(out, args.out)
    print(format_metrics_table([{**metrics, "model": args.model_name}]))
    return 0


def _cmd_retrieval(args: argparse.Namespace) -> int:
    """`sslcore benchmark retrieval`: GeM / R-MAC instance retrieval (checks its own arguments)."""
    from sslcore.benchmarks.retrieval import DEFAULT_CONFIG, run_retrieval_benchmark
    from sslcore.engine.launcher import setup_logging
    from sslcore.report import format_metrics_table

    if bool(args.data) == bool(args.revisited_root):
        raise ValueError("retrieval needs one set: --data DIR (prepared Fashion-MNIST) or "
                         "--revisited-root DIR --dataset NAME (revisited Oxford/Paris layout)")
    if bool(args.checkpoint) == bool(args.random_init):
        raise ValueError("retrieval needs exactly one of --checkpoint CKPT and --random-init")
    setup_logging()
    metrics = run_retrieval_benchmark(
        args.out, data_dir=args.data, revisited_root=args.revisited_root, dataset=args.dataset,
        allow_pickle=args.allow_pickle, checkpoint=args.checkpoint, config=args.config or DEFAULT_CONFIG,
        layer=args.layer or "res5", descriptor=args.descriptor, gem_p=args.gem_p, whiten=args.whiten,
        whiten_root=args.whiten_root, num_queries=args.queries, num_database=args.database,
        num_whiten=args.whiten_size, image_size=args.image_size, seed=args.seed, device=args.device)
    print(format_metrics_table([{**metrics, "model": args.model_name}]))
    return 0


def _cmd_clusterfit(args: argparse.Namespace) -> int:
    """`sslcore benchmark clusterfit --features DIR --out DIR --num-clusters K` (local paths)."""
    from sslcore.benchmarks.clusterfit import run_clusterfit_stage
    from sslcore.report import format_metrics_table

    if not args.features or not args.num_clusters:
        raise ValueError("clusterfit needs --features DIR (extracted features) and --num-clusters K")
    metrics = run_clusterfit_stage(args.features, args.out, num_clusters=args.num_clusters,
                                   n_iter=args.n_iter, layer=args.layer or "", seed=args.seed)
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
            device=args.device, baselines_only=args.baselines_only)
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


def _run_svm_or_low_shot(args: argparse.Namespace, features: Path, out: Path, layers: List[str]) -> dict:
    """`sslcore benchmark svm|low_shot`: the VOC07 SVM on every --layer, or low-shot SVMs on one."""
    if args.benchmark == "svm":
        from sslcore.benchmarks.svm import run_svm_benchmark

        return run_svm_benchmark(features, out, layers=layers, n_jobs=args.n_jobs)
    from sslcore.benchmarks.low_shot import LOW_SHOT_K, NUM_SAMPLES, run_low_shot_benchmark

    try:
        k_values = [int(k) for k in args.k_values.split(",") if k.strip()] if args.k_values else LOW_SHOT_K
    except ValueError:
        raise ValueError(f"--k-values {args.k_values!r} must be comma-separated integers, e.g. 1,8,96") from None
    num_samples = NUM_SAMPLES if args.samples is None else args.samples
    return run_low_shot_benchmark(features, out, layer=layers[0], k_values=k_values, num_samples=num_samples,
                                  seed=args.seed, n_jobs=args.n_jobs)


def _cmd_finetune(args: argparse.Namespace) -> int:
    """`sslcore benchmark finetune --data DIR --out DIR --mode M`: through-the-trunk training + test."""
    from sslcore.benchmarks.finetune import MODES, run_finetune_benchmark
    from sslcore.engine.launcher import setup_logging
    from sslcore.report import format_metrics_table

    if not args.data or not args.mode:
        raise ValueError("finetune needs --data DIR (a prepared disk_filelist dataset) and --mode "
                         f"{'|'.join(MODES)}")
    setup_logging()
    metrics = run_finetune_benchmark(args.data, args.out, checkpoint=args.checkpoint, mode=args.mode,
                                     fraction=args.fraction, epochs=args.epochs, seed=args.seed)
    print(format_metrics_table([{**metrics, "model": args.model_name}]))
    return 0


def _cmd_detection(args: argparse.Namespace) -> int:
    """`sslcore benchmark detection --data VOCROOT --out DIR`: Faster R-CNN, VOC AP50 + COCO mAP."""
    from sslcore.benchmarks.detection import run_detection_benchmark
    from sslcore.engine.launcher import setup_logging
    from sslcore.report import format_metrics_table

    if not args.data:
        raise ValueError("detection needs --data DIR: a VOC2007-layout set such as the one from "
                         "`sslcore data prepare fashion_mnist_scenes --out DIR`")
    if bool(args.checkpoint) == bool(args.random_init):
        raise ValueError("detection needs exactly one of --checkpoint CKPT and --random-init")
    setup_logging()
    metrics = run_detection_benchmark(
        args.data, args.out, checkpoint=args.checkpoint, iterations=args.iterations, batch_size=args.batch_size,
        lr=args.lr, min_size=args.min_size, max_size=args.max_size, seed=args.seed, device=args.device,
        num_train=args.num_train, num_test=args.num_test)
    print(format_metrics_table([{**metrics, "model": args.model_name}]))
    return 0


def _add_detection_arguments(bench: argparse.ArgumentParser) -> None:
    """Options of `sslcore benchmark detection` (also --data, --checkpoint, --random-init, --seed, --device)."""
    group = bench.add_argument_group("detection")
    group.add_argument("--iterations", type=int, default=300, help="detection: SGD updates")
    group.add_argument("--batch-size", type=int, default=8, help="detection: images per update")
    group.add_argument("--lr", type=float, default=0.02, help="detection: base learning rate")
    group.add_argument("--min-size", type=int, default=96, help="detection: short image side (px)")
    group.add_argument("--max-size", type=int, default=96, help="detection: long image side bound (px)")
    group.add_argument("--num-train", type=int, default=None, help="detection: first N trainval images")
    group.add_argument("--num-test", type=int, default=None, help="detection: first N test images")


def _add_finetune_arguments(bench: argparse.ArgumentParser) -> None:
    """Options of `sslcore benchmark finetune` (also --data, --checkpoint, --epochs, --seed)."""
    group = bench.add_argument_group("finetune")
    group.add_argument("--mode", default=None, choices=("linear", "fulltune", "semi_supervised"),
                       help="finetune: frozen-trunk linear probes, full fine-tuning, or fine-tuning "
                       "on a per-class fraction of the labels")
    group.add_argument("--fraction", type=float, default=None,
                       help="finetune: train on this per-class share of the labels (semi_supervised "
                       "default 0.01; linear/fulltune default: all)")


def _add_svm_arguments(bench: argparse.ArgumentParser) -> None:
    """Options of `sslcore benchmark svm` and `low_shot`."""
    group = bench.add_argument_group("svm / low_shot")
    group.add_argument("--n-jobs", type=int, default=None, help="svm/low_shot: joblib workers (-1 = all cores)")
    group.add_argument("--k-values", default=None, help="low_shot: positives per class, default 1,2,4,8,16,32,64,96")
    group.add_argument("--samples", type=int, default=None, help="low_shot: independent samples per k (5)")


def _add_retrieval_arguments(bench: argparse.ArgumentParser) -> None:
    """Options of `sslcore benchmark retrieval` and `clusterfit` (checked by their commands)."""
    group = bench.add_argument_group("retrieval / clusterfit")
    group.add_argument("--data", default=None, help="retrieval: a prepared Fashion-MNIST directory")
    group.add_argument("--checkpoint", default=None, help="retrieval: trunk weights")
    group.add_argument("--random-init", action="store_true", help="retrieval: a random-init trunk")
    group.add_argument("--config", default=None, help="retrieval: extraction recipe (trunk, transform)")
    group.add_argument("--descriptor", default="gem", choices=("gem", "rmac"))
    group.add_argument("--gem-p", type=float, default=3.0)
    group.add_argument("--whiten", action="store_true", help="PCA whitening on a separate split")
    group.add_argument("--whiten-root", default=None, help="revisited sets: images for whitening")
    group.add_argument("--whiten-size", type=int, default=5000)
    group.add_argument("--queries", type=int, default=500)
    group.add_argument("--database", type=int, default=5000)
    group.add_argument("--image-size", type=int, default=0, help="longer side in px (0 = as stored)")
    group.add_argument("--revisited-root", default=None, help="a set in the revisited Oxford/Paris layout")
    group.add_argument("--dataset", default="", help="its name: gnd_<dataset>.json")
    group.add_argument("--allow-pickle", action="store_true",
                       help="read gnd_<dataset>.pkl (unpickling can run code: trusted files only)")
    group.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    group.add_argument("--num-clusters", type=int, default=None, help="clusterfit: K of k-means")
    group.add_argument("--n-iter", type=int, default=50, help="clusterfit: k-means iterations")
    group.add_argument("--seed", type=int, default=0)


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
    prep.add_argument("name", help="'fashion_mnist', 'fashion_mnist_scenes' or a dataset directory "
                      "to copy and verify")
    prep.add_argument("--out", required=True)
    prep.add_argument("--limit-train", type=int, default=None)
    prep.add_argument("--limit-test", type=int, default=None)
    prep.add_argument("--canvas-size", type=int, default=None, help="fashion_mnist_scenes only (px)")
    prep.add_argument("--seed", type=int, default=None, help="fashion_mnist_scenes only")
    prep.set_defaults(func=cmd_data_prepare)
    subset = data.add_parser("subset", help="a seeded per-class subset of a disk_filelist split")
    subset.add_argument("--data", required=True, help="a disk_filelist dataset directory")
    subset.add_argument("--split", default="train")
    how = subset.add_mutually_exclusive_group(required=True)
    how.add_argument("--fraction", type=float, help="share of each class, in (0, 1]")
    how.add_argument("--per-class", type=int, help="samples (positives) per class")
    subset.add_argument("--seed", type=int, default=0)
    subset.add_argument("--out", required=True)
    subset.set_defaults(func=cmd_data_subset)
    bench = sub.add_parser("benchmark", help="evaluate extracted features")
    bench.add_argument("benchmark", choices=("knn", "linear", "retrieval", "clusterfit", "svm", "low_shot",
                                          "finetune", "detection"))
    bench.add_argument("--features", default=None,
                       help="directory or s3:// prefix of <split>_<layer>_*.npy")
    bench.add_argument("--out", required=True, help="where metrics.json goes (directory or s3://)")
    bench.add_argument("--layer", action="append", default=None,
                       help="default res5avg (retrieval: res5); svm takes it several times")
    bench.add_argument("--epochs", type=int, default=None, help="linear only")
    bench.add_argument("--model-name", default="features", help="label in the printed table")
    _add_retrieval_arguments(bench)
    _add_svm_arguments(bench)
    _add_finetune_arguments(bench)
    _add_detection_arguments(bench)
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
    zoo.add_argument("--baselines-only", action="store_true",
                     help="train nothing: score the methods' trunks at random init and raw pixels")
    zoo.set_defaults(func=cmd_zoo)
    pipes = sub.add_parser("pipelines", help="compile or run the Kubeflow pipelines", add_help=False)
    pipes.add_argument("rest", nargs=argparse.REMAINDER)
    pipes.set_defaults(func=cmd_pipelines)
    _add_convert_parser(sub)
    return parser


def cmd_convert(args: argparse.Namespace) -> int:
    """`sslcore convert --from SRC --to DST IN OUT`: checkpoint format conversion (sslcore.convert)."""
    from sslcore.convert import convert_checkpoint_file

    summary = convert_checkpoint_file(args.input, args.output, source=args.source, target=args.target,
                                      allow_pickle=args.allow_pickle, caffe2_variant=args.caffe2_variant,
                                      bgr2rgb=not args.no_bgr2rgb, num_heads=args.num_heads)
    print(f"{summary['source']} -> {summary['target']}: {summary['num_tensors']} tensors "
          f"({summary['num_elements']} values) written to {summary['output']}; first keys "
          f"{', '.join(summary['first_keys'])}")
    return 0


def _add_convert_parser(sub: argparse._SubParsersAction) -> None:
    """`sslcore convert` (pairs checked by sslcore.convert, which lists the supported ones)."""
    conv = sub.add_parser("convert", help="convert a checkpoint to/from torchvision, detectron2, "
                          "ClassyVision, timm, caffe2")
    conv.add_argument("--from", dest="source", required=True,
                      help="sslcore | torchvision | timm | classy_vision | caffe2")
    conv.add_argument("--to", dest="target", required=True,
                      help="sslcore | torchvision | detectron2 | classy_vision")
    conv.add_argument("input", help="checkpoint to read (.torch/.pth; caffe2 .pkl)")
    conv.add_argument("output", help="file to write (.pkl for detectron2)")
    conv.add_argument("--allow-pickle", action="store_true",
                      help="caffe2: unpickle the .pkl (can run arbitrary code: trusted files only)")
    conv.add_argument("--caffe2-variant", default="alexnet_bvlc",
                      help="caffe2: alexnet_jigsaw | alexnet_colorization | alexnet_bvlc "
                      "(or jigsaw | colorization | supervised)")
    conv.add_argument("--no-bgr2rgb", action="store_true",
                      help="caffe2: keep conv1's BGR channel order")
    conv.add_argument("--num-heads", type=int, default=None,
                      help="timm ViT state dicts: attention heads (default hidden_dim // 64)")
    conv.set_defaults(func=cmd_convert)


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
