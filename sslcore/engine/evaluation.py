"""The test phase of the train engine (VISSL's TEST_MODEL): top-k accuracy on DATA.TEST.

With ``TEST_MODEL: true`` and ``METERS.name: accuracy_list_meter``, after every
``TEST_EVERY_NUM_EPOCH``-th training epoch and after the last one, the model runs in eval mode
over the whole DATA.TEST split (each process a disjoint share, no padding) and the top-k
accuracy of every model output is computed from counts summed over processes. The training
forward passes are measured too (``METERS.enable_training_meter``), at no extra forward cost.

Files in CHECKPOINT.DIR (rank 0):

- ``meters.json``: JSON lines, one per tested epoch: ``{"iteration", "phase_idx", "epoch",
  "train_accuracy_list_meter": {layer: {"top1": %, ...}}, "test_accuracy_list_meter": {...}}``
  (VISSL writes these meter lines into its own metrics.json; here metrics.json is the benchmark
  file, and stdout.json keeps one loss record per line for the report's training curves);
- ``metrics.json`` (:func:`sslcore.benchmarks.metrics.write_metrics`, benchmark
  ``METERS.benchmark_name``): top-1/top-5 per layer of the latest test, every record with the
  protocol parameters (epochs, lr, schedule, batch size, pool ops, ...), plus ``"history"``.

``TEST_ONLY: true`` skips training and tests the restored (or MODEL.WEIGHTS_INIT) model once.

Protocol: Goyal et al. 2019, https://arxiv.org/abs/1905.01235 (VISSL's linear benchmark).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from sslcore.config.schema import Key, declare
from sslcore.engine import checkpoint as ckpt
from sslcore.engine.distributed import get_rank, get_world_size, is_primary
from sslcore.engine.hooks import Hook
from sslcore.engine.meters import AccuracyListMeter, build_accuracy_meter

log = logging.getLogger(__name__)

declare("", {
    "TEST_MODEL": Key(False, bool, "test the model on DATA.TEST during training (needs METERS.name="
                      "accuracy_list_meter); VISSL's default is True, here False so that "
                      "pretraining runs need no test split"),
    "TEST_ONLY": Key(False, bool, "only test the model (restored from CHECKPOINT.DIR or "
                     "MODEL.WEIGHTS_INIT) on DATA.TEST, no training"),
    "TEST_EVERY_NUM_EPOCH": Key(1, int, "test after every N training epochs (and after the last)"),
})

METERS_LOG = "meters.json"


def meter_default_names(cfg: DictConfig) -> List[str]:
    """The layer names of the model outputs: the pooled features in feature evaluation, else []."""
    settings = cfg.MODEL.FEATURE_EVAL_SETTINGS
    if settings.EVAL_MODE_ON and not settings.EVAL_TRUNK_AND_HEAD:
        return [str(entry[0]) for entry in settings.LINEAR_EVAL_FEAT_POOL_OPS_MAP or []]
    return []


def build_test_loader(cfg: DictConfig) -> torch.utils.data.DataLoader:
    """DATA.TEST, unshuffled; rank r of R reads samples r, r + R, ... (each sample exactly once).

    Raises:
        ValueError: DATA.TEST has no data source (names the key).
    """
    from sslcore.data import build_dataset
    from sslcore.data.collators import build_collator

    test = cfg.DATA.TEST
    if not test.DATA_SOURCES:
        raise ValueError("TEST_MODEL/TEST_ONLY need a test split: set config.DATA.TEST.DATA_SOURCES "
                         "(and DATA_PATHS or DATASET_NAMES), or set config.TEST_MODEL=false")
    dataset = build_dataset(cfg, "TEST")
    indices = list(range(get_rank(), len(dataset), get_world_size()))
    params = OmegaConf.to_container(test.COLLATE_FUNCTION_PARAMS, resolve=True)
    return torch.utils.data.DataLoader(
        dataset, batch_size=int(test.BATCHSIZE_PER_REPLICA), sampler=indices,
        num_workers=int(cfg.DATA.NUM_DATALOADER_WORKERS),
        collate_fn=build_collator(str(test.COLLATE_FUNCTION), params))


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, loader: Any, meter: AccuracyListMeter,
                      device: torch.device) -> Dict[str, Dict[str, float]]:
    """Run ``model`` in eval mode over ``loader`` and return the meter's value summed over ranks.

    Args:
        model: the (unwrapped) model; its train/eval mode is restored afterwards.
        loader: batches ``{"data": [views], "label": (N,)}``; one view is passed as a tensor.
        meter: reset, filled and synchronised here.
        device: where the forward pass runs.

    Returns:
        ``{layer: {"top1": %, "top5": %}}`` over the whole split.
    """
    was_training = model.training
    model.eval()
    meter.reset()
    try:
        for batch in loader:
            data = [x.to(device, non_blocking=True) for x in batch["data"]]
            outputs = model(data[0] if len(data) == 1 else data)
            meter.update(outputs, batch["label"].to(device))
    finally:
        model.train(was_training)
    meter.sync(device if device.type == "cuda" else None)
    return meter.value()


def describe_protocol(task: Any) -> Dict[str, Any]:
    """The parameters every metrics record carries: epochs, LRs, schedule, batch, pool ops, ..."""
    cfg = task.cfg
    opt = cfg.OPTIMIZER
    lr_cfg = OmegaConf.to_container(opt.param_schedulers.lr, resolve=True)
    settings = cfg.MODEL.FEATURE_EVAL_SETTINGS
    lr, head_lr = task.lr_schedule(0.0), None
    if task.head_lr_schedule is not None:
        head_lr = float(task.head_lr_schedule(0.0))
    params = {
        "epochs": task.num_phases, "lr": float(lr), "schedule": lr_cfg.get("name"),
        "milestones": lr_cfg.get("milestones"), "lr_values": lr_cfg.get("values"),
        "update_interval": lr_cfg.get("update_interval", "step"),
        "batch_size_per_replica": int(cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA),
        "batch_size": int(cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA) * get_world_size(),
        "optimizer": str(opt.name), "momentum": float(opt.momentum), "nesterov": bool(opt.nesterov),
        "weight_decay": float(opt.weight_decay),
        "trunk_frozen": bool(getattr(ckpt.unwrap(task.model), "is_trunk_frozen", False)),
        "pool_ops": OmegaConf.to_container(settings.LINEAR_EVAL_FEAT_POOL_OPS_MAP, resolve=True)
        if settings.EVAL_MODE_ON and not settings.EVAL_TRUNK_AND_HEAD else None,
        "weights": str(cfg.MODEL.WEIGHTS_INIT.PARAMS_FILE) or "random init",
        "seed": int(cfg.SEED_VALUE),
    }
    if head_lr is not None:
        params["head_lr"] = head_lr
        params["head_weight_decay"] = float(opt.head_optimizer_params.weight_decay) if bool(
            opt.head_optimizer_params.use_different_wd) else float(opt.weight_decay)
    return params


class AccuracyTestHook(Hook):
    """Train-split meter from the training forward passes; test phase at the chosen epochs.

    Args:
        cfg: the resolved config (TEST_MODEL, TEST_EVERY_NUM_EPOCH, METERS).
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        names = meter_default_names(cfg)
        self.train_meter = build_accuracy_meter(cfg, names)
        self.test_meter = build_accuracy_meter(cfg, names)
        self.every = max(1, int(cfg.TEST_EVERY_NUM_EPOCH))
        self.loader: Optional[Any] = None
        self.history: List[Dict[str, Any]] = []

    def on_start(self, task: Any) -> None:
        """Keep the earlier epochs' records of a resumed run; start a fresh run's log afresh."""
        path = task.ckpt_dir / METERS_LOG
        if not path.is_file():
            return
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        self.history = [r for r in lines if int(r["phase_idx"]) < task.start_phase]
        if is_primary() and len(self.history) != len(lines):
            path.write_text("".join(json.dumps(r) + "\n" for r in self.history))

    def on_phase_start(self, task: Any) -> None:
        self.train_meter.reset()

    def on_loss_and_meter(self, task: Any) -> None:
        if self.cfg.METERS.enable_training_meter and task.last_target is not None:
            self.train_meter.update(task.last_output, task.last_target)

    def on_phase_end(self, task: Any) -> None:
        record: Dict[str, Any] = {"iteration": task.iteration, "phase_idx": task.phase_idx,
                                  "epoch": task.phase_idx + 1}
        if self.cfg.METERS.enable_training_meter:
            self.train_meter.sync(task.device if task.device.type == "cuda" else None)
            record["train_accuracy_list_meter"] = self.train_meter.value()
        last = task.phase_idx == task.num_phases - 1
        if self.cfg.TEST_MODEL and ((task.phase_idx + 1) % self.every == 0 or last):
            record["test_accuracy_list_meter"] = self.run_test(task)
        self.history.append(record)
        if is_primary():
            with open(task.ckpt_dir / METERS_LOG, "a") as f:
                f.write(json.dumps(record) + "\n")
            if "test_accuracy_list_meter" in record:
                self.write_metrics(task)

    def run_test(self, task: Any) -> Dict[str, Dict[str, float]]:
        """Test now; log and return ``{layer: {"top1": %, ...}}``."""
        if self.loader is None:
            self.loader = build_test_loader(self.cfg)
        start = time.perf_counter()
        value = evaluate_accuracy(ckpt.unwrap(task.model), self.loader, self.test_meter, task.device)
        self.num_test = self.test_meter.num_samples
        if is_primary():
            shown = ", ".join(f"{n} " + " ".join(f"{k} {v:.2f}" for k, v in accs.items())
                              for n, accs in value.items())
            log.info("test after epoch %d (%d images, %.1f s): %s", task.phase_idx + 1,
                     self.num_test, time.perf_counter() - start, shown)
        return value

    def write_metrics(self, task: Any) -> Path:
        """Write CHECKPOINT.DIR/metrics.json from the latest test (rank 0 only)."""
        from sslcore.benchmarks.metrics import make_record, write_metrics

        tested = [r for r in self.history if "test_accuracy_list_meter" in r]
        params = describe_protocol(task)
        records = [make_record(metric, round(value, 6), unit="%", layer=layer, params=params)
                   for layer, accs in tested[-1]["test_accuracy_list_meter"].items()
                   for metric, value in accs.items()]
        extra = {"protocol": _protocol_text(self.cfg), "layers": self.test_meter.names,
                 "tested_after_epoch": tested[-1]["epoch"],
                 "sizes": {"num_train": len(task.loader.dataset), "num_test": self.num_test},
                 "history": self.history}
        return write_metrics(task.ckpt_dir, str(self.cfg.METERS.benchmark_name), records, extra)


def _protocol_text(cfg: DictConfig) -> str:
    settings = cfg.MODEL.FEATURE_EVAL_SETTINGS
    if settings.EVAL_MODE_ON and settings.FREEZE_TRUNK_ONLY:
        return ("linear probes (eval_mlp: BN + FC) on several frozen-trunk layers, trained through "
                "the trunk on augmented images (Goyal et al. 2019, VISSL linear benchmark)")
    return ("full fine-tuning of trunk and head from the given weights (VISSL fulltune / "
            "semi-supervised benchmark)")


def evaluation_hooks(cfg: DictConfig) -> List[Hook]:
    """``[AccuracyTestHook]`` when METERS.name is accuracy_list_meter, else [].

    Raises:
        ValueError: TEST_MODEL or TEST_ONLY without ``METERS.name=accuracy_list_meter``.
    """
    if str(cfg.METERS.name) == "accuracy_list_meter":
        return [AccuracyTestHook(cfg)]
    if cfg.TEST_MODEL or cfg.TEST_ONLY:
        raise ValueError("config.TEST_MODEL/TEST_ONLY need a meter: set "
                         "config.METERS.name=accuracy_list_meter (and METERS.accuracy_list_meter."
                         "num_meters to the number of model outputs)")
    return []


def run_test_only(task: Any) -> Path:
    """TEST_ONLY: test the task's model once and write meters.json and metrics.json.

    Returns:
        The path of CHECKPOINT.DIR/metrics.json (staging path for ``s3://`` runs).

    Raises:
        ValueError: no accuracy_list_meter configured, or no test split.
    """
    hook = next((h for h in task.hooks if isinstance(h, AccuracyTestHook)), None)
    if hook is None:
        evaluation_hooks(task.cfg)  # raises the missing-meter error
        raise ValueError("config.TEST_ONLY needs config.METERS.name=accuracy_list_meter")
    record = {"iteration": task.iteration, "phase_idx": task.start_phase - 1,
              "epoch": task.start_phase, "test_accuracy_list_meter": hook.run_test(task)}
    hook.history.append(record)
    if is_primary():
        task.ckpt_dir.mkdir(parents=True, exist_ok=True)
        with open(task.ckpt_dir / METERS_LOG, "a") as f:
            f.write(json.dumps(record) + "\n")
        hook.write_metrics(task)
    return task.ckpt_dir / "metrics.json"
