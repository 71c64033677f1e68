"""MoCo (v1 and v2): a momentum key encoder and a global queue of keys as negatives.

- [0] MoCo, He et al. 2020, https://arxiv.org/abs/1911.05722
- [1] MoCo v2, Chen et al. 2020, https://arxiv.org/abs/2003.04297

One step, as the method's hook points run it::

    forward:     keys  = key_encoder(view 1)        (shuffling BN across ranks, no gradient)
                 query = model(view 0)
    loss:        InfoNCE(query, keys, queue)         (sslcore.losses.moco.MoCoLoss)
    on_update:   key_encoder <- m key_encoder + (1 - m) model     (after the optimizer step)
                 queue <- every rank's keys, in rank order        (FIFO)

v1 and v2 differ only by config: v1 has a linear head and T = 0.07; v2 an MLP head, T = 0.2 and
blur augmentation (recipes under ``config/pretrain/moco/``).

Updating the key encoder after the step equals MoCo's update before the next forward; the key
encoder starts as an exact copy of the model, as in MoCo's first step. The key encoder, the queue
and its pointer are the method's checkpoint state, so a resumed run continues exactly.

BatchNorm: with several processes and ``shuffle_batch`` the key images are permuted across ranks
before the key encoder and the keys permuted back ("shuffling BN", [0] Sec. 3.3); the
permutation comes from (SEED_VALUE, iteration), so every rank draws the same one without
communication and a resumed run draws the same ones again. SyncBatchNorm
(MODEL.SYNC_BN_CONFIG.CONVERT_BN_TO_SYNC_BN) is the alternative; on one process neither applies.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from sslcore.data.seeding import derive_seed
from sslcore.engine.distributed import gather_no_grad, get_rank, get_world_size
from sslcore.methods.base import SSLMethod, register_method
from sslcore.methods.momentum import MomentumEncoder
from sslcore.methods.multicrop import count_crops

_SHUFFLE_STREAM = 0x5F0C0  # separates the shuffle seeds from every other seeded stream


def shuffle_permutation(global_batch: int, seed: int, iteration: int) -> torch.Tensor:
    """The shuffling-BN permutation of a step, the same on every rank.

    Args:
        global_batch: G, key images over all ranks.
        seed: the run's SEED_VALUE.
        iteration: the step's index (optimizer updates done before it).

    Returns:
        (G,) int64 CPU permutation of 0..G-1.
    """
    generator = torch.Generator().manual_seed(derive_seed(_SHUFFLE_STREAM, seed, iteration))
    return torch.randperm(global_batch, generator=generator)


@torch.no_grad()
def encode_keys_shuffled(encoder: Any, images: torch.Tensor,
                         permutation: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run the key encoder on a globally shuffled batch and undo the shuffle (shuffling BN).

    Every rank gathers all key images, encodes its slice ``permutation[r*B:(r+1)*B]`` of them,
    and gathers the keys back; key row j of the gathered result belongs to image
    ``permutation[j]``, so scattering by the permutation restores the original order.

    Args:
        encoder: the key encoder; returns a list whose first entry is (B, D).
        images: (B, C, H, W) this rank's key images; every rank holds the same B.
        permutation: (world_size * B,) the same permutation on every rank.

    Returns:
        ``(keys, all_keys)``: (B, D) L2-normalised keys of this rank's images, and (G, D) the keys
        of every rank's images in rank order (what the queue receives).

    Raises:
        ValueError: if the permutation length is not world_size * B.
    """
    world, rank, batch = get_world_size(), get_rank(), images.shape[0]
    if permutation.numel() != world * batch:
        raise ValueError(f"shuffle permutation of length {permutation.numel()} does not cover "
                         f"{world} ranks x {batch} images")
    permutation = permutation.to(images.device)
    all_images = gather_no_grad(images)
    mine = permutation[rank * batch:(rank + 1) * batch]
    keys_shuffled = F.normalize(encoder(all_images[mine])[0].float(), dim=1)
    gathered = gather_no_grad(keys_shuffled)
    all_keys = torch.empty_like(gathered)
    all_keys[permutation] = gathered
    return all_keys[rank * batch:(rank + 1) * batch], all_keys


@register_method
class MoCo(SSLMethod):
    """MoCo: query from ``data`` (view 0), key from ``data_momentum`` (view 1; moco_collator).

    Args:
        cfg: the resolved config (SEED_VALUE, LOSS.moco_loss).
        model: the model being trained (DDP-wrapped or not); copied once into the key encoder.
        loss: a :class:`sslcore.losses.moco.MoCoLoss`.
    """

    loss_names = ("moco_loss",)

    def __init__(self, cfg: DictConfig, model: Any, loss: Any) -> None:
        super().__init__(cfg, model, loss)
        self.key_encoder = MomentumEncoder(model)
        self.seed = int(cfg.SEED_VALUE)
        self._keys: Optional[torch.Tensor] = None
        self._all_keys: Optional[torch.Tensor] = None

    @classmethod
    def infer_config(cls, cfg: DictConfig, *, world_size: int) -> Dict[str, Any]:
        """Nothing to derive; checks the views, the collator and the queue size.

        Raises:
            ValueError: not exactly 2 views, another collator than moco_collator, or a queue
                smaller than the global batch.
        """
        train = cfg.DATA.TRAIN
        views = count_crops(list(train.TRANSFORMS))
        if views != 2:
            raise ValueError("MoCo needs exactly 2 views per image (query and key): start "
                             "DATA.TRAIN.TRANSFORMS with {name: ImgReplicatePil, num_times: 2}; "
                             f"found {views}")
        if train.COLLATE_FUNCTION != "moco_collator":
            raise ValueError(f"MoCo reads the key view from 'data_momentum': set "
                             f"DATA.TRAIN.COLLATE_FUNCTION=moco_collator (is "
                             f"{train.COLLATE_FUNCTION})")
        global_batch = int(train.BATCHSIZE_PER_REPLICA) * world_size
        if int(cfg.LOSS.moco_loss.queue_size) < global_batch:
            raise ValueError(f"LOSS.moco_loss.queue_size={cfg.LOSS.moco_loss.queue_size} is smaller "
                             f"than the global batch {global_batch}; raise it (MoCo: 65536)")
        return {}

    def compute_keys(self, images: torch.Tensor, iteration: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys of this rank's key images, and of every rank's (for the queue).

        Args:
            images: (B, C, H, W) key view.
            iteration: the step index (selects the shuffling-BN permutation).

        Returns:
            ``(keys (B, D), all_keys (world_size * B, D))``, L2-normalised, without gradient.
        """
        world = get_world_size()
        if self.loss.shuffle_batch and world > 1:
            permutation = shuffle_permutation(world * images.shape[0], self.seed, iteration)
            return encode_keys_shuffled(self.key_encoder, images, permutation)
        keys = F.normalize(self.key_encoder(images)[0].float(), dim=1)
        return keys, gather_no_grad(keys)

    def forward(self, task: Any, batch: Dict[str, Any]) -> List[torch.Tensor]:
        """Keys from ``batch["data_momentum"][0]``, then the model on ``batch["data"][0]``.

        Raises:
            ValueError: if the batch has no ``data_momentum`` (another collator).
        """
        if "data_momentum" not in batch:
            raise ValueError("MoCo needs the key view in batch['data_momentum']: set "
                             "DATA.TRAIN.COLLATE_FUNCTION=moco_collator")
        query_images = batch["data"][0]
        key_images = batch["data_momentum"][0].to(query_images.device, non_blocking=True)
        self._keys, self._all_keys = self.compute_keys(key_images, task.iteration)
        return self.model(query_images)

    def compute_loss(self, task: Any, outputs: List[torch.Tensor],
                     batch: Dict[str, Any]) -> torch.Tensor:
        """InfoNCE of the queries (first head chain's output) against keys and queue."""
        return self.loss(outputs[0], self._keys)

    def on_update(self, task: Any) -> None:
        """After the optimizer step: EMA-update the key encoder, then enqueue the step's keys."""
        self.key_encoder.update(self.model, self.loss.momentum)
        if self._all_keys is not None:
            self.loss.enqueue(self._all_keys)
        self._keys = self._all_keys = None

    def state_dict(self) -> Dict[str, Any]:
        """``{"loss": queue and pointer, "key_encoder": the key encoder's weights}``."""
        return {"loss": self.loss.state_dict(),
                "key_encoder": self.key_encoder.state_dict_for_checkpoint()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore queue, pointer and key encoder.

        A checkpoint without a key encoder (e.g. written by another method) restarts it as a copy
        of the (already restored) model, as at the start of training.

        Raises:
            RuntimeError: if the saved shapes differ from this run's (e.g. another queue_size).
        """
        super().load_state_dict(state)
        if "key_encoder" in state:
            self.key_encoder.load_from_checkpoint(state["key_encoder"])
        else:
            self.key_encoder.update(self.model, 0.0)
