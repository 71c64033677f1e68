"""Process-group set-up and the collective primitives every loss uses.

Runs under ``torchrun`` (env:// rendezvous: MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK)
or as a single process with no process group at all. gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import logging
import os
from typing import List

import torch
import torch.distributed as dist

from sslcore.config.schema import Key, declare

log = logging.getLogger(__name__)

declare("DISTRIBUTED", {
    "BACKEND": Key("nccl", str, "process-group backend on GPU; CPU runs always use gloo",
                   choices=("nccl", "gloo")),
    "NUM_NODES": Key(1, int, "number of machines (PyTorchJob replicas: Master + Workers)"),
    "NUM_PROC_PER_NODE": Key(1, int, "processes per machine (usually GPUs per node)"),
    "INIT_METHOD": Key("env", str, "rendezvous: 'env' reads torchrun's MASTER_ADDR/MASTER_PORT",
                       choices=("env",)),
    "RUN_ID": Key("auto", str, "rendezvous id; 'auto' lets torchrun choose"),
})
declare("MACHINE", {
    "DEVICE": Key("gpu", str, "'gpu' uses CUDA when available and falls back to CPU; 'cpu' forces CPU",
                  choices=("gpu", "cpu")),
})


def get_world_size() -> int:
    """Number of processes in the default group (1 without a group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    """This process's global rank (0 without a group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_primary() -> bool:
    """True on rank 0, the process that writes checkpoints, logs and reports."""
    return get_rank() == 0


def select_device(device: str) -> torch.device:
    """Return the torch device for MACHINE.DEVICE (``"gpu"`` falls back to CPU with a warning)."""
    if device == "gpu" and torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if device == "gpu":
        log.warning("MACHINE.DEVICE=gpu but CUDA is not available: running on CPU")
    return torch.device("cpu")


def init_distributed(device: torch.device, backend: str = "nccl") -> None:
    """Join the process group that torchrun described in the environment, if any.

    Does nothing when WORLD_SIZE is unset or 1. Uses ``backend`` on CUDA and gloo on CPU.

    Raises:
        RuntimeError: if the rendezvous fails (torch's own message names the address).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return
    chosen = backend if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=chosen, init_method="env://")
    log.info("joined process group: rank %d of %d, backend %s", get_rank(), world, chosen)


def shutdown_distributed() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every rank's gradient slice back to its owner."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> tuple:  # type: ignore[override]
        out = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(out, tensor.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping gradients to every input.

    The gradient reaching rank r's input is the sum over ranks of the loss gradient with respect
    to rank r's slice, so a loss averaged over the global batch trains exactly as on one process.

    Args:
        tensor: (B, ...) this rank's part.

    Returns:
        (world_size * B, ...) in rank order; ``tensor`` itself without a process group.
    """
    if get_world_size() == 1:
        return tensor
    return torch.cat(_GatherWithGrad.apply(tensor), dim=0)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (B, ...) from every rank along dim 0, without gradients."""
    if get_world_size() == 1:
        return tensor
    out: List[torch.Tensor] = [torch.zeros_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks (returns a new tensor; identity without a group)."""
    if get_world_size() == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out / get_world_size()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks (returns a new tensor; identity without a group)."""
    if get_world_size() == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from ``src`` to every rank and return it."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op without a group)."""
    if get_world_size() > 1:
        dist.barrier()
