"""MoCo's InfoNCE loss: each query against its own key and a queue of keys from past batches.

Registry key ``"moco_loss"``; config ``LOSS.moco_loss`` (VISSL's names). For a query q (from the
online encoder), its key k+ (the other view through the momentum key encoder) and the K queued
keys k_1..k_K, all L2-normalised, with temperature T::

    loss(q) = -log( exp(q . k+ / T) / (exp(q . k+ / T) + sum_j exp(q . k_j / T)) )

i.e. cross-entropy over K + 1 logits with the positive at index 0. The queue is global: it holds
the keys of every rank (gathered in rank order), is identical on every rank, and is refreshed
first-in first-out by :meth:`MoCoLoss.enqueue` after each update, so each rank's loss averaged
over ranks (DDP) equals one process holding the whole batch.

The loss owns the queue; the method (:class:`sslcore.methods.moco.MoCo`) owns the key encoder and
decides when to enqueue. ``momentum`` and ``shuffle_batch`` are read by the method.

Papers:
    - [0] MoCo, He et al. 2020, https://arxiv.org/abs/1911.05722
    - [1] MoCo v2, Chen et al. 2020, https://arxiv.org/abs/2003.04297 (MLP head, T = 0.2, blur)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.losses.registry import LOSSES

declare("LOSS.moco_loss", {
    "embedding_dim": Key(128, int, "D, width of queries, keys and queue rows (the last head's "
                         "output width)"),
    "queue_size": Key(65536, int, "K, keys kept in the queue (global, the same on every rank); "
                      "at least the global batch size"),
    "momentum": Key(0.999, float, "m of the key encoder's EMA, theta_k <- m theta_k + (1 - m) "
                    "theta_q, after every optimizer step (constant)"),
    "temperature": Key(0.2, float, "softmax temperature T (MoCo v1: 0.07, MoCo v2: 0.2)"),
    "shuffle_batch": Key(True, bool, "shuffling BN: with several processes, the key encoder sees a "
                         "random global permutation of the key images, so BatchNorm statistics "
                         "cannot leak which key is the positive; no effect on one process. "
                         "SyncBatchNorm (MODEL.SYNC_BN_CONFIG) is the alternative"),
})


@LOSSES.register("moco_loss")
class MoCoLoss(nn.Module):
    """InfoNCE of queries against their keys and a FIFO queue of past keys (MoCo v1/v2).

    Papers: [0] MoCo, He et al. 2020, https://arxiv.org/abs/1911.05722;
    [1] MoCo v2, Chen et al. 2020, https://arxiv.org/abs/2003.04297

    Buffers (saved with the method's checkpoint state):
        ``queue``: (K, D) float32 L2-normalised keys; starts as random unit vectors drawn from a
        fixed seed, so it is identical on every rank without communication.
        ``queue_ptr``: () int64, the row the next key is written to.

    Args:
        embedding_dim: D >= 1.
        queue_size: K >= 1.
        momentum: key-encoder EMA coefficient in [0, 1] (used by the method).
        temperature: T > 0.
        shuffle_batch: shuffling BN across ranks (used by the method).
        queue_seed: seed of the queue's random initial keys.

    Raises:
        ValueError: for a non-positive size or temperature, or a momentum outside [0, 1].

    Example:
        >>> loss_fn = MoCoLoss(embedding_dim=128, queue_size=4096, temperature=0.2)
        >>> q, k = torch.randn(32, 128), torch.randn(32, 128)
        >>> loss = loss_fn(q, k)          # scalar
        >>> loss_fn.enqueue(k)            # after the optimizer step, with every rank's keys
    """

    def __init__(self, embedding_dim: int = 128, queue_size: int = 65536, momentum: float = 0.999,
                 temperature: float = 0.2, shuffle_batch: bool = True, *,
                 queue_seed: int = 0) -> None:
        super().__init__()
        if embedding_dim < 1 or queue_size < 1:
            raise ValueError("LOSS.moco_loss.embedding_dim and queue_size must be >= 1, got "
                             f"{embedding_dim} and {queue_size}")
        if not temperature > 0:
            raise ValueError(f"LOSS.moco_loss.temperature must be > 0, got {temperature}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"LOSS.moco_loss.momentum must be in [0, 1], got {momentum}")
        self.embedding_dim = int(embedding_dim)
        self.queue_size = int(queue_size)
        self.momentum = float(momentum)
        self.temperature = float(temperature)
        self.shuffle_batch = bool(shuffle_batch)
        generator = torch.Generator().manual_seed(queue_seed)
        queue = torch.randn(self.queue_size, self.embedding_dim, generator=generator)
        self.register_buffer("queue", F.normalize(queue, dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, section: Any) -> "MoCoLoss":
        """Build from ``LOSS.moco_loss`` (embedding_dim, queue_size, momentum, temperature,
        shuffle_batch).

        Raises:
            ValueError: as the constructor.
        """
        if isinstance(section, DictConfig):
            section = OmegaConf.to_container(section, resolve=True)
        return cls(embedding_dim=int(section["embedding_dim"]), queue_size=int(section["queue_size"]),
                   momentum=float(section["momentum"]), temperature=float(section["temperature"]),
                   shuffle_batch=bool(section.get("shuffle_batch", True)))

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, queue_size={self.queue_size}, "
                f"momentum={self.momentum}, temperature={self.temperature}, "
                f"shuffle_batch={self.shuffle_batch}")

    def _check(self, name: str, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.embedding_dim:
            raise ValueError(
                f"MoCoLoss: {name} must have shape (B, {self.embedding_dim}) (LOSS.moco_loss."
                f"embedding_dim), got {tuple(x.shape)}; set embedding_dim to the last head's "
                "output width")

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over [positive, K queued negatives] for this rank's queries.

        Args:
            query: (B, D) online-encoder outputs (any scale; normalised here). A list holding
                one such tensor (a model's output) is accepted.
            key: (B, D) key-encoder outputs for the same samples, row-aligned with ``query``
                (normalised and detached here).

        Returns:
            Scalar loss (float64 for float64 queries, else float32), the mean over the B queries.

        Raises:
            ValueError: if the shapes are not (B, D) with D = embedding_dim, or B differs.

        The queue is read, not changed: call :meth:`enqueue` after ``backward()`` (changing it
        in place before would invalidate the graph).
        """
        if isinstance(query, (list, tuple)):
            if len(query) != 1:
                raise ValueError(f"MoCoLoss takes one query tensor, got a list of {len(query)}")
            query = query[0]
        self._check("query", query)
        self._check("key", key)
        if query.shape[0] != key.shape[0]:
            raise ValueError(f"MoCoLoss: {query.shape[0]} queries but {key.shape[0]} keys; each "
                             "query needs the key of its own sample")
        dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=query.device.type, enabled=False):
            q = F.normalize(query.to(dtype), dim=1)
            k = F.normalize(key.detach().to(dtype), dim=1)
            positive = (q * k).sum(dim=1, keepdim=True)
            negatives = q @ self.queue.to(dtype).t()
            logits = torch.cat([positive, negatives], dim=1) / self.temperature
            target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
            return F.cross_entropy(logits, target)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` over the oldest queue rows (ring buffer) and advance the pointer.

        Args:
            keys: (G, D) keys of the whole global batch, in rank order (every rank passes the
                same tensor, so the queues stay identical); normalised here.

        Raises:
            ValueError: if G > queue_size or the width is not embedding_dim.
        """
        self._check("keys", keys)
        count = keys.shape[0]
        if count > self.queue_size:
            raise ValueError(f"MoCoLoss: {count} keys per step do not fit a queue of "
                             f"{self.queue_size}; raise LOSS.moco_loss.queue_size to at least the "
                             "global batch size")
        ptr = int(self.queue_ptr)
        rows = (ptr + torch.arange(count, device=self.queue.device)) % self.queue_size
        self.queue[rows] = F.normalize(keys.to(self.queue.dtype), dim=1).to(self.queue.device)
        self.queue_ptr.fill_((ptr + count) % self.queue_size)
