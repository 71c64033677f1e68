"""Through-the-trunk evaluation: widened linear probes, full fine-tuning, semi-supervised fine-tuning.

Three of VISSL's benchmarks, all run by the train engine (:func:`sslcore.engine.launcher.run_engine`)
with its test phase (:mod:`sslcore.engine.evaluation`) on a prepared disk_filelist dataset:

- ``linear``: frozen trunk, one ``eval_mlp`` head (BN -> FC) per trunk layer (res2 ... res5avg),
  trained on augmented images (Goyal et al. 2019, https://arxiv.org/abs/1905.01235). The
  features-based :mod:`sslcore.benchmarks.linear` is the unaugmented, single-layer variant.
- ``fulltune``: trunk and a linear head train from the pretrained weights, with separate
  trunk and head learning rates (``OPTIMIZER.head_optimizer_params.use_different_lr``).
- ``semi_supervised``: ``fulltune`` on a per-class ``fraction`` (1 % or 10 %) of the training
  labels, drawn with ``seed`` and saved (:mod:`sslcore.data.subsets`), as in SimCLR (Chen et al.
  2020, https://arxiv.org/abs/2002.05709, section 5.2).

    sslcore benchmark finetune --data DIR --out DIR [--checkpoint CKPT] --mode fulltune [--epochs 2]

``out`` receives ``metrics.json`` (top-1/top-5 per layer in %, with the protocol parameters),
``meters.json`` (train and test accuracy per epoch), ``run/`` (the engine's checkpoints, logs
and resolved config) and, with a fraction, ``subset/`` (the subset dataset with ``subset.json``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

log = logging.getLogger(__name__)

MODES = ("linear", "fulltune", "semi_supervised")
_ROOT = "benchmark"
RECIPES = {
    "linear": f"{_ROOT}/linear_image_classification/fashion_mnist/eval_resnet_fashion_mnist_linear",
    "fulltune": f"{_ROOT}/fulltune/fashion_mnist/eval_resnet_fashion_mnist_fulltune",
    "semi_supervised_01": f"{_ROOT}/semi_supervised/fashion_mnist/eval_resnet_fashion_mnist_semi_sup_per01",
    "semi_supervised_10": f"{_ROOT}/semi_supervised/fashion_mnist/eval_resnet_fashion_mnist_semi_sup_per10",
}
DEFAULT_SEMI_SUPERVISED_FRACTION = 0.01
PathLike = Union[str, Path]


def recipe_for(mode: str, fraction: Optional[float] = None) -> str:
    """The Fashion-MNIST recipe of ``mode`` (semi-supervised: the 1 % one up to 5 %, else 10 %).

    Raises:
        ValueError: unknown ``mode``.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is unknown; use one of {', '.join(MODES)}")
    if mode == "semi_supervised":
        return RECIPES["semi_supervised_01" if (fraction or 0.01) <= 0.05 else "semi_supervised_10"]
    return RECIPES[mode]


def rescale_epoch_schedule(lr: Dict[str, Any], old_epochs: int, new_epochs: int) -> Dict[str, Any]:
    """A multistep schedule's milestones moved from ``old_epochs`` to ``new_epochs`` (same shape).

    Milestone m becomes round(m * new / old); those outside [1, new - 1] or repeated are dropped
    and ``values`` is cut to one more than the milestones left. Other schedules are returned
    unchanged (they run on the fraction of training done).

    Args:
        lr: a VISSL LR schedule mapping (``param_schedulers.lr``).
        old_epochs: the recipe's OPTIMIZER.num_epochs.
        new_epochs: the requested number of epochs (>= 1).

    Returns:
        A new mapping.
    """
    if lr.get("name") != "multistep" or "milestones" not in lr:
        return dict(lr)
    milestones: List[int] = []
    for m in lr["milestones"]:
        scaled = int(round(int(m) * new_epochs / max(old_epochs, 1)))
        if 1 <= scaled < new_epochs and scaled not in milestones:
            milestones.append(scaled)
    return {**lr, "milestones": milestones, "values": list(lr["values"])[: len(milestones) + 1]}


def _flow(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()


def _data_overrides(split: str, data: Path) -> List[str]:
    prefix = data / split.lower()
    return [f"config.DATA.{split}.DATA_SOURCES=[disk_filelist]",
            f"config.DATA.{split}.DATA_PATHS=[{prefix}_images.npy]",
            f"config.DATA.{split}.LABEL_SOURCES=[disk_filelist]",
            f"config.DATA.{split}.LABEL_PATHS=[{prefix}_labels.npy]",
            f"config.DATA.{split}.DATASET_NAMES=[]"]


def _build_subset(data: Path, out: Path, fraction: float, seed: int) -> Path:
    from sslcore.data.subsets import sample_fraction_per_class, write_subset

    labels = np.load(data / "train_labels.npy", allow_pickle=False)
    indices = sample_fraction_per_class(labels, fraction, seed=seed)
    write_subset(data, "train", indices, out, seed=seed,
                 description={"fraction": fraction, "protocol": "per-class fraction of train"})
    log.info("semi-supervised subset: %d of %d training images (%.3g per class) in %s",
             len(indices), len(labels), fraction, out)
    return out


def _schedule_overrides(cfg: Any, epochs: Optional[int]) -> List[str]:
    from omegaconf import OmegaConf

    if epochs is None:
        return []
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    old = int(cfg.OPTIMIZER.num_epochs)
    out = [f"config.OPTIMIZER.num_epochs={int(epochs)}"]
    for name in ("lr", "lr_head"):
        lr = OmegaConf.to_container(cfg.OPTIMIZER.param_schedulers[name], resolve=True)
        new = rescale_epoch_schedule(lr, old, int(epochs))
        if new != lr:
            out.append(f"config.OPTIMIZER.param_schedulers.{name}={_flow(new)}")
    return out


def _fit_batch(cfg: Any, train_dir: Path) -> List[str]:
    """Lower the per-replica batch when the (subset) train split holds fewer images."""
    size = len(np.load(train_dir / "train_labels.npy", allow_pickle=False))
    limit = int(cfg.DATA.TRAIN.DATA_LIMIT)
    size = min(size, limit) if limit > 0 else size
    batch = int(cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA)
    if size >= batch:
        return []
    if size < 2:
        raise ValueError(f"the training split holds {size} image(s); BatchNorm needs >= 2: raise "
                         "the fraction or use more data")
    log.info("train split holds %d images < batch %d: batch lowered to %d", size, batch, size)
    return [f"config.DATA.TRAIN.BATCHSIZE_PER_REPLICA={size}"]


def run_finetune_benchmark(data_dir: PathLike, out_dir: PathLike, *, checkpoint: Optional[PathLike] = None,
                           mode: str = "linear", fraction: Optional[float] = None,
                           epochs: Optional[int] = None, extra_overrides: Sequence[str] = (),
                           seed: int = 0, recipe: Optional[str] = None,
                           keep_checkpoints: bool = True) -> Dict[str, Any]:
    """Run one through-the-trunk benchmark on a prepared dataset and write ``out/metrics.json``.

    Args:
        data_dir: a disk_filelist dataset (``{train,test}_{images,labels}.npy``), e.g. from
            ``sslcore data prepare fashion_mnist``.
        out_dir: the result directory (created).
        checkpoint: pretrained weights (sslcore/VISSL checkpoint, local or ``s3://``); None
            evaluates a randomly initialised trunk (the baseline). Its heads are not loaded.
        mode: ``"linear"``, ``"fulltune"`` or ``"semi_supervised"``.
        fraction: per-class fraction of train labels used, in (0, 1]; default 0.01 for
            ``semi_supervised`` and all labels otherwise.
        epochs: training epochs (multistep milestones are rescaled); None keeps the recipe's.
        extra_overrides: more VISSL-style overrides, applied last.
        seed: SEED_VALUE of the run and the subset's seed.
        recipe: a config name replacing the mode's Fashion-MNIST recipe (e.g. a quick one).
        keep_checkpoints: False deletes the trained model files of ``out/run`` at the end (a
            metrics artifact then stays small; logs and the resolved config are kept).

    Returns:
        The metrics dict as written: benchmark ``linear_eval`` (linear) or ``finetune``, a top1
        and a top5 record per layer (%), params with the protocol (epochs, lr, head_lr,
        schedule, batch size, pool ops, mode, fraction), ``history`` per epoch, sizes, seconds.

    Raises:
        ValueError: unknown mode, bad fraction/epochs, a config error.
        FileNotFoundError: ``data_dir`` lacks the disk_filelist files.
    """
    from sslcore.benchmarks.metrics import make_record, read_metrics, write_metrics
    from sslcore.config import compose_config
    from sslcore.engine.launcher import run_engine

    data, out = Path(data_dir), Path(out_dir)
    for split in ("train", "test"):
        if not (data / f"{split}_images.npy").is_file():
            raise FileNotFoundError(f"{data} has no {split}_images.npy: run `sslcore data prepare "
                                    "fashion_mnist --out DIR` first (or pass a disk_filelist dataset)")
    if mode == "semi_supervised" and fraction is None:
        fraction = DEFAULT_SEMI_SUPERVISED_FRACTION
    if fraction is not None and not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}; e.g. 0.01 for 1 % of the labels")
    config_name = recipe or recipe_for(mode, fraction)
    out.mkdir(parents=True, exist_ok=True)
    train_dir = _build_subset(data, out / "subset", float(fraction), seed) if fraction else data
    overrides = [f"config={config_name}", *_data_overrides("TRAIN", train_dir),
                 *_data_overrides("TEST", data), f"config.SEED_VALUE={seed}",
                 f"config.CHECKPOINT.DIR={out / 'run'}",
                 f"config.MODEL.WEIGHTS_INIT.PARAMS_FILE={checkpoint or ''}"]
    base = compose_config(overrides + list(extra_overrides))
    overrides += _schedule_overrides(base, epochs) + _fit_batch(base, train_dir) + list(extra_overrides)
    start = time.monotonic()
    run_engine(overrides, "train")
    seconds = round(time.monotonic() - start, 1)
    result = read_metrics(out / "run")
    setting = {"mode": mode, "fraction": fraction}
    records = [make_record(r["name"], r["value"], unit=r["unit"], layer=r["layer"],
                           params={**r["params"], **setting}) for r in result["records"]]
    extra = {k: v for k, v in result.items() if k not in ("benchmark", "records")}
    extra.update({"mode": mode, "fraction": fraction, "recipe": config_name,
                  "checkpoint": str(checkpoint) if checkpoint else None, "train_seconds": seconds})
    shutil.copyfile(out / "run" / "meters.json", out / "meters.json")
    if not keep_checkpoints:
        for path in (out / "run").glob("*.torch"):
            path.unlink()
    path = write_metrics(out, result["benchmark"], records, extra)
    log.info("%s: %s", mode, json.dumps({r["layer"] + "/" + r["name"]: r["value"] for r in records}))
    return read_metrics(path)
