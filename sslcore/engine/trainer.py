"""The pretraining engine (``engine_name=train``): build the task, restore it, run the loop.

The loop reads top to bottom in :func:`train` and :func:`train_step`; what differs between
methods lives in the method object (:mod:`sslcore.methods`), what happens around the loop
(logging, TensorBoard, checkpoints) in hooks (:mod:`sslcore.engine.standard_hooks`).
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.engine import checkpoint as ckpt
from sslcore.engine.distributed import barrier, get_rank, get_world_size
from sslcore.engine.evaluation import evaluation_hooks, run_test_only
from sslcore.engine.hooks import Hook, hook_names, run_hooks
from sslcore.engine.temp_frozen_params import TempFrozenParams
from sslcore.optim.optimizer import (
    build_head_lr_schedule,
    build_optimizer,
    build_weight_decay_schedule,
    set_learning_rates,
    set_weight_decay,
)
from sslcore.optim.schedulers import build_param_scheduler

log = logging.getLogger(__name__)

declare("", {
    "SEED_VALUE": Key(0, int, "seed for weights init, sampling and augmentation"),
    "LOG_FREQUENCY": Key(10, int, "print a progress line every N iterations"),
    "VERBOSE": Key(False, bool, "log debug messages"),
})
declare("MODEL", {
    "AMP_PARAMS": {
        "USE_AMP": Key(False, bool, "mixed precision (torch.amp autocast + GradScaler), CUDA only"),
        "AMP_TYPE": Key("pytorch", str, "'pytorch'; 'apex' is accepted and mapped to torch.amp",
                        choices=("pytorch", "apex")),
        "AMP_ARGS": Key({"opt_level": "O1"}, dict, "apex-style args; O1 maps to float16 autocast"),
    },
    "SYNC_BN_CONFIG": {
        "CONVERT_BN_TO_SYNC_BN": Key(False, bool, "convert BatchNorm to SyncBatchNorm (CUDA, >1 process)"),
        "SYNC_BN_TYPE": Key("pytorch", str, "SyncBatchNorm implementation", choices=("pytorch",)),
    },
})


@dataclass
class TrainTask:
    """Everything the loop and the hooks share. Hooks read and write these fields."""

    cfg: DictConfig
    device: torch.device
    model: nn.Module
    method: Any
    optimizer: torch.optim.Optimizer
    lr_schedule: Any
    loader: Any
    scaler: Optional[torch.amp.GradScaler]
    ckpt_dir: Path
    num_phases: int
    iters_per_phase: int
    phase_idx: int = 0
    iteration: int = 0
    iteration_in_phase: int = 0
    start_phase: int = 0
    start_iter_in_phase: int = 0
    last_output: Any = None
    last_loss: Optional[torch.Tensor] = None
    last_batch_images: int = 0
    last_target: Optional[torch.Tensor] = None
    head_lr_schedule: Any = None
    wd_schedule: Any = None
    frozen_params: Optional[TempFrozenParams] = None
    num_skipped: int = 0
    hooks: List[Hook] = field(default_factory=list)

    @property
    def max_iteration(self) -> int:
        """Total optimizer updates of the run."""
        return self.num_phases * self.iters_per_phase

    @property
    def where(self) -> float:
        """Fraction of training done, in [0, 1), as the LR schedules expect."""
        return self.where_for(self.cfg.OPTIMIZER.param_schedulers.lr.get("update_interval", "step"))

    def where_for(self, interval: str) -> float:
        """Fraction of training done for a schedule updated per ``"step"`` or per ``"epoch"``."""
        if interval == "epoch":
            return min(self.phase_idx / self.num_phases, 1 - 1e-9)
        return min(self.iteration / self.max_iteration, 1 - 1e-9)

    def learning_rates(self) -> tuple:
        """``(lr, head_lr)`` at the current point; head_lr is None without a head schedule."""
        lr = float(self.lr_schedule(self.where))
        if self.head_lr_schedule is None:
            return lr, None
        interval = self.cfg.OPTIMIZER.param_schedulers.lr_head.get("update_interval", "step")
        return lr, float(self.head_lr_schedule(self.where_for(interval)))

    def apply_schedules(self) -> None:
        """Set the optimizer's LRs, and its weight decay when it has a schedule, for this update."""
        set_learning_rates(self.optimizer, *self.learning_rates())
        if self.wd_schedule is not None:
            optim = self.cfg.OPTIMIZER
            interval = optim.param_schedulers.weight_decay.get("update_interval", "step")
            set_weight_decay(self.optimizer, float(self.wd_schedule(self.where_for(interval))),
                             heads_too=not bool(optim.head_optimizer_params.use_different_wd))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_task(cfg: DictConfig, device: torch.device) -> TrainTask:
    """Build model, method, optimizer, schedule and data loader from a resolved config.

    ``task.frozen_params`` holds ``MODEL.TEMP_FROZEN_PARAMS_ITER_MAP``, checked against the model's
    parameter names (a ValueError names the closest ones). ``task.ckpt_dir`` is CHECKPOINT.DIR,
    or its local staging directory when it is ``s3://``.
    """
    from sslcore.engine.remote import staging_dir
    from sslcore.data import build_dataloader, build_dataset
    from sslcore.losses import build_loss
    from sslcore.methods import get_method_class
    from sslcore.models import build_model

    seed_everything(int(cfg.SEED_VALUE))
    model = build_model(cfg.MODEL).to(device)
    if cfg.MODEL.SYNC_BN_CONFIG.CONVERT_BN_TO_SYNC_BN:
        if device.type == "cuda" and get_world_size() > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.warning("CONVERT_BN_TO_SYNC_BN needs CUDA and >1 process: keeping BatchNorm")
    if cfg.MODEL.WEIGHTS_INIT.PARAMS_FILE:
        w = cfg.MODEL.WEIGHTS_INIT
        ckpt.init_model_from_weights(model, w.PARAMS_FILE, state_dict_key_name=w.STATE_DICT_KEY_NAME,
                                     skip_layers=list(w.SKIP_LAYERS), remove_prefix=w.REMOVE_PREFIX,
                                     append_prefix=w.APPEND_PREFIX)
    if get_world_size() > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    loss = build_loss(cfg.LOSS).to(device)
    method = get_method_class(str(cfg.LOSS.name))(cfg, model, loss)
    frozen_params = TempFrozenParams.from_config(cfg.MODEL.TEMP_FROZEN_PARAMS_ITER_MAP, model)
    if frozen_params.entries:
        log.info("temporarily frozen parameters: %s", frozen_params.entries)
    lr_params = OmegaConf.to_container(cfg.OPTIMIZER.param_schedulers.lr, resolve=True)
    lr_schedule = build_param_scheduler(lr_params, int(cfg.OPTIMIZER.num_epochs))
    head_lr_schedule = build_head_lr_schedule(cfg.OPTIMIZER)
    optimizer = build_optimizer(cfg.OPTIMIZER, model, float(lr_schedule(0.0)),
                                None if head_lr_schedule is None else float(head_lr_schedule(0.0)))
    dataset = build_dataset(cfg, "TRAIN")
    loader = build_dataloader(cfg, "TRAIN", dataset, world_size=get_world_size(), rank=get_rank(),
                              shuffle=True)
    use_amp = bool(cfg.MODEL.AMP_PARAMS.USE_AMP)
    if use_amp and device.type != "cuda":
        log.warning("MODEL.AMP_PARAMS.USE_AMP needs CUDA: training in float32 on CPU")
        use_amp = False
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    if len(loader) == 0:
        raise ValueError(
            f"the training data gives no full batch: {len(dataset)} images, batch "
            f"{cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA} x {get_world_size()} processes; lower "
            "DATA.TRAIN.BATCHSIZE_PER_REPLICA or set DATA.TRAIN.DROP_LAST=false"
        )
    return TrainTask(cfg=cfg, device=device, model=model, method=method, optimizer=optimizer,
                     lr_schedule=lr_schedule, loader=loader, scaler=scaler,
                     ckpt_dir=staging_dir(str(cfg.CHECKPOINT.DIR)), num_phases=int(cfg.OPTIMIZER.num_epochs),
                     iters_per_phase=len(loader), head_lr_schedule=head_lr_schedule,
                     wd_schedule=build_weight_decay_schedule(cfg.OPTIMIZER), frozen_params=frozen_params)


def restore(task: TrainTask) -> None:
    """Resume from CHECKPOINT.DIR/checkpoint.torch when AUTO_RESUME allows it."""
    c = task.cfg.CHECKPOINT
    path = ckpt.find_latest_checkpoint(task.ckpt_dir)
    if path is None or not c.AUTO_RESUME or c.OVERWRITE_EXISTING:
        return
    state = ckpt.load_checkpoint(path)
    classy = state["classy_state_dict"]
    ckpt.unwrap(task.model).load_state_dict(ckpt.flat_model_state(classy["base_model"]))
    task.optimizer.load_state_dict(classy["optimizer"])
    task.method.load_state_dict(classy.get("loss") or {})
    if task.scaler is not None and classy.get("amp"):
        task.scaler.load_state_dict(classy["amp"])
    task.iteration = int(state["iteration"])
    if state.get("phase_complete", True):
        task.start_phase, task.start_iter_in_phase = int(state["phase_idx"]) + 1, 0
    else:
        task.start_phase = int(state["phase_idx"])
        task.start_iter_in_phase = int(state["iteration_in_phase"])
    log.info("resumed from %s: phase %d, iteration %d", path, task.start_phase, task.iteration)


def _to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    out = dict(batch)
    out["data"] = [x.to(device, non_blocking=True) for x in batch["data"]]
    for key in ("label", "data_idx"):
        if key in batch:
            out[key] = batch[key].to(device, non_blocking=True)
    return out


def train_step(task: TrainTask, batch: Dict[str, Any]) -> None:
    """One update: forward, loss, backward, optimizer step, with the hook points between."""
    # counted on the CPU copy: no device sync per step
    task.last_batch_images = int(batch["data_idx"].unique().numel()) * get_world_size()
    batch = _to_device(batch, task.device)
    task.num_skipped += int(batch.get("num_skipped", 0))
    task.last_target = batch.get("label")
    amp_dtype = torch.float16 if task.scaler is not None else None
    with torch.autocast(task.device.type, dtype=amp_dtype, enabled=task.scaler is not None):
        task.last_output = task.method.forward(task, batch)
        run_hooks(task.hooks, "on_forward", task)
        loss = task.method.compute_loss(task, task.last_output, batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"loss is {loss.item()} at iteration {task.iteration} (phase {task.phase_idx}); lower "
            "the LR (OPTIMIZER.param_schedulers.lr) or enable warm-up; last checkpoint is kept"
        )
    task.last_loss = loss.detach()
    run_hooks(task.hooks, "on_loss_and_meter", task)
    task.optimizer.zero_grad(set_to_none=True)
    if task.scaler is not None:
        task.scaler.scale(loss).backward()
    else:
        loss.backward()
    run_hooks(task.hooks, "on_backward", task)
    if task.frozen_params is not None:
        task.frozen_params.apply(task.model, task.iteration)
    task.apply_schedules()
    if task.scaler is not None:
        task.scaler.step(task.optimizer)
        task.scaler.update()
    else:
        task.optimizer.step()
    run_hooks(task.hooks, "on_update", task)
    task.iteration += 1
    task.iteration_in_phase += 1
    run_hooks(task.hooks, "on_step", task)


def train(cfg: DictConfig, device: torch.device, extra_hooks: Optional[List[Hook]] = None) -> Path:
    """Train per ``cfg`` (resolved) and return the final checkpoint's path.

    With TEST_MODEL the model is also tested on DATA.TEST every TEST_EVERY_NUM_EPOCH epochs and
    at the end (:mod:`sslcore.engine.evaluation`); with TEST_ONLY it is only tested (restored
    from CHECKPOINT.DIR or MODEL.WEIGHTS_INIT) and the path of the written metrics.json is
    returned instead.

    With an ``s3://`` CHECKPOINT.DIR the run works in a local staging directory: the remote
    latest checkpoint is pulled first (AUTO_RESUME in a fresh pod) and every checkpoint, log and
    TensorBoard event file is uploaded as it appears (:mod:`sslcore.engine.remote`). The returned
    path is then the staging copy of the final checkpoint.

    Raises:
        StorageError: the object store cannot be read or written (named in the message).
        FloatingPointError: the loss became NaN/inf (the last checkpoint stays usable).
        ValueError: the data gives no batch.
    """
    from sslcore.data import set_loader_epoch
    from sslcore.engine.standard_hooks import default_hooks

    from sslcore.engine.remote import RemoteSyncHook, pull_latest
    from sslcore.storage import is_remote

    task = build_task(cfg, device)
    task.hooks = [task.method] + default_hooks(cfg) + evaluation_hooks(cfg)
    remote = str(cfg.CHECKPOINT.DIR)
    if is_remote(remote):
        if cfg.CHECKPOINT.AUTO_RESUME and not cfg.CHECKPOINT.OVERWRITE_EXISTING:
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one download per node
                pull_latest(remote, task.ckpt_dir)
            barrier()
        task.hooks.append(RemoteSyncHook(task.ckpt_dir, remote))
    task.hooks += list(extra_hooks or [])
    restore(task)
    if cfg.TEST_ONLY:
        return run_test_only(task)
    log.info("hooks: %s", ", ".join(hook_names(task.hooks)))
    run_hooks(task.hooks, "on_start", task)
    sampler = task.loader.sampler
    for phase in range(task.start_phase, task.num_phases):
        task.phase_idx = phase
        skip = task.start_iter_in_phase if phase == task.start_phase else 0
        task.iteration_in_phase = skip
        set_loader_epoch(task.loader, phase)
        resumable = hasattr(sampler, "set_start_iter")
        if resumable:
            sampler.set_start_iter(skip)
        ckpt.unwrap(task.model).train()
        run_hooks(task.hooks, "on_phase_start", task)
        for i, batch in enumerate(task.loader):
            if not resumable and i < skip:
                continue  # torch's DistributedSampler cannot start mid-epoch: consume and drop
            train_step(task, batch)
        run_hooks(task.hooks, "on_phase_end", task)
    run_hooks(task.hooks, "on_end", task)
    final = ckpt.find_latest_checkpoint(task.ckpt_dir)
    if final is None:
        raise RuntimeError(f"training finished but no checkpoint is in {task.ckpt_dir}")
    return final
