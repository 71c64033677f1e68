"""The hooks every training run gets: progress line + JSON log, TensorBoard scalars, checkpoints.

Only rank 0 prints, logs and writes; every rank takes part in checkpoint barriers.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from datetime import timedelta
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from sslcore.config.schema import Key, declare
from sslcore.engine import checkpoint as ckpt
from sslcore.engine.distributed import all_reduce_mean, barrier, is_primary
from sslcore.engine.hooks import Hook

log = logging.getLogger(__name__)

declare("HOOKS", {
    "TENSORBOARD_SETUP": {
        "USE_TENSORBOARD": Key(True, bool, "write TensorBoard scalars (loss, lr, images/s, ETA, peak memory)"),
        "EXPERIMENT_LOG_DIR": Key("tb_logs", str, "TensorBoard directory, relative to CHECKPOINT.DIR"),
        "FLUSH_EVERY_N_MIN": Key(1, int, "flush TensorBoard files every N minutes"),
        "LOG_PARAMS": Key(False, bool, "also log parameter histograms at every phase end"),
    },
})

TRAIN_LOG = "stdout.json"


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA allocator peak on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ProgressHook(Hook):
    """Every LOG_FREQUENCY iterations: a progress line and a record in CHECKPOINT.DIR/stdout.json.

    A record is ``{"iteration", "phase_idx", "loss", "lr", "weight_decay", "images_per_sec",
    "eta_seconds", "peak_mem_mb", "num_skipped"}``; loss is averaged over ranks, weight_decay is
    that of the regularised parameters (0 when none are). The line reads e.g.
    ``phase 2/10 iter 340/1170 loss 4.812 lr 0.2400 img/s 612 eta 0:03:10 mem 1450MB``.
    """

    def __init__(self, log_frequency: int) -> None:
        self.log_frequency = max(1, log_frequency)
        self.window_start = 0.0
        self.window_images = 0
        self.speed = 0.0
        self.last_record: Dict[str, Any] = {}

    def on_start(self, task: Any) -> None:
        self.window_start = time.perf_counter()
        self.start_iteration = task.iteration
        self.run_start = self.window_start
        if is_primary():
            task.ckpt_dir.mkdir(parents=True, exist_ok=True)
            log.info("training %d phases x %d iterations, starting at phase %d iteration %d",
                     task.num_phases, task.iters_per_phase, task.start_phase, task.iteration)

    def on_step(self, task: Any) -> None:
        self.window_images += task.last_batch_images
        last_of_phase = task.iteration_in_phase == task.iters_per_phase
        if task.iteration % self.log_frequency and not last_of_phase:
            return
        loss = float(all_reduce_mean(task.last_loss.float()).item())
        now = time.perf_counter()
        self.speed = self.window_images / max(now - self.window_start, 1e-9)
        done = task.iteration - self.start_iteration
        per_iter = (now - self.run_start) / max(done, 1)
        eta = per_iter * (task.max_iteration - task.iteration)
        self.window_start, self.window_images = now, 0
        record = {"iteration": task.iteration, "phase_idx": task.phase_idx, "loss": loss,
                  "lr": task.optimizer.param_groups[0]["lr"],
                  "weight_decay": next((g["weight_decay"] for g in task.optimizer.param_groups
                                        if g.get("regularized")), 0.0),
                  "images_per_sec": self.speed,
                  "eta_seconds": eta, "peak_mem_mb": peak_memory_mb(task.device),
                  "num_skipped": task.num_skipped}
        self.last_record = record
        if not is_primary():
            return
        with open(task.ckpt_dir / TRAIN_LOG, "a") as f:
            f.write(json.dumps(record) + "\n")
        log.info("phase %d/%d iter %d/%d loss %.4f lr %.4f img/s %.0f eta %s mem %.0fMB%s",
                 task.phase_idx + 1, task.num_phases, task.iteration, task.max_iteration, loss,
                 record["lr"], self.speed, timedelta(seconds=int(eta)), record["peak_mem_mb"],
                 f" skipped {task.num_skipped}" if task.num_skipped else "")

    def on_end(self, task: Any) -> None:
        if is_primary():
            minutes = (time.perf_counter() - self.run_start) / 60
            log.info("training done: %d iterations in %.1f min; %d unreadable images skipped",
                     task.iteration - self.start_iteration, minutes, task.num_skipped)


class TensorboardHook(Hook):
    """TensorBoard scalars under CHECKPOINT.DIR/<EXPERIMENT_LOG_DIR>, read from the progress hook."""

    def __init__(self, cfg: DictConfig, progress: ProgressHook) -> None:
        self.setup = cfg.HOOKS.TENSORBOARD_SETUP
        self.progress = progress
        self.writer: Optional[Any] = None

    def on_start(self, task: Any) -> None:
        if not is_primary():
            return
        from torch.utils.tensorboard import SummaryWriter

        logdir = task.ckpt_dir / self.setup.EXPERIMENT_LOG_DIR
        self.writer = SummaryWriter(str(logdir), flush_secs=60 * int(self.setup.FLUSH_EVERY_N_MIN))

    def on_step(self, task: Any) -> None:
        rec = self.progress.last_record
        if self.writer is None or rec.get("iteration") != task.iteration:
            return
        step = task.iteration
        self.writer.add_scalar("Losses/train_loss", rec["loss"], step)
        self.writer.add_scalar("Optimization/lr", rec["lr"], step)
        self.writer.add_scalar("Optimization/weight_decay", rec["weight_decay"], step)
        self.writer.add_scalar("Speed/images_per_sec", rec["images_per_sec"], step)
        self.writer.add_scalar("Speed/eta_seconds", rec["eta_seconds"], step)
        self.writer.add_scalar("Memory/peak_mem_mb", rec["peak_mem_mb"], step)

    def on_phase_end(self, task: Any) -> None:
        if self.writer is not None and self.setup.LOG_PARAMS:
            for name, param in ckpt.unwrap(task.model).named_parameters():
                self.writer.add_histogram(f"Parameters/{name}", param.detach().cpu(), task.iteration)

    def on_end(self, task: Any) -> None:
        if self.writer is not None:
            self.writer.close()


class CheckpointHook(Hook):
    """Saves VISSL-layout checkpoints per CHECKPOINT.CHECKPOINT_FREQUENCY / ITER_FREQUENCY."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.config_tree = OmegaConf.to_container(cfg, resolve=True)

    def _save(self, task: Any, name: str, complete: bool) -> None:
        if is_primary():
            ckpt.save_checkpoint(
                task.ckpt_dir / name, model=task.model, optimizer=task.optimizer,
                method_state=task.method.state_dict(), phase_idx=task.phase_idx,
                iteration=task.iteration, phase_complete=complete,
                iteration_in_phase=task.iteration_in_phase, config=self.config_tree,
                scaler_state=task.scaler.state_dict() if task.scaler is not None else None)
        barrier()

    def on_step(self, task: Any) -> None:
        every = int(self.cfg.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY)
        if every > 0 and task.iteration % every == 0 and task.iteration_in_phase < task.iters_per_phase:
            self._save(task, f"model_iteration{task.iteration}.torch", complete=False)

    def on_phase_end(self, task: Any) -> None:
        last = task.phase_idx == task.num_phases - 1
        if last:
            self._save(task, f"model_final_checkpoint_phase{task.phase_idx}.torch", complete=True)
        elif (task.phase_idx + 1) % max(1, int(self.cfg.CHECKPOINT.CHECKPOINT_FREQUENCY)) == 0:
            self._save(task, f"model_phase{task.phase_idx}.torch", complete=True)


def default_hooks(cfg: DictConfig) -> List[Hook]:
    """Progress, TensorBoard (if enabled) and checkpoint hooks, in that order."""
    progress = ProgressHook(int(cfg.LOG_FREQUENCY))
    hooks: List[Hook] = [progress]
    if cfg.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD:
        hooks.append(TensorboardHook(cfg, progress))
    hooks.append(CheckpointHook(cfg))
    return hooks
