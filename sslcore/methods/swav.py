"""SwAV: multi-crop, online Sinkhorn codes, swapped prediction, prototypes on the unit sphere.

- [0] SwAV, Caron et al. 2020, https://arxiv.org/abs/2006.09882

Per step: the model runs once over every crop (trunk per resolution, ``swav_head`` once), the
loss (:class:`sslcore.losses.swav.SwAVLoss`) turns the assignment crops' scores into codes with a
distributed Sinkhorn-Knopp and lets the other crops predict them, and pushes the assignment
crops' embeddings into its global queue. The method owns the rest of SwAV's recipe:

- prototypes L2-normalised at start and after every optimizer step (``normalize_last_layer``);
- the recipes freeze the prototypes for the first epoch with ``MODEL.TEMP_FROZEN_PARAMS_ITER_MAP``
  (VISSL's key, applied by the engine: :mod:`sslcore.engine.temp_frozen_params`);
- derived settings (crop count, embedding width, prototype counts, queue sizes, dump directory)
  computed from the rest of the config in :meth:`SwAV.infer_config`.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslcore.engine.checkpoint import unwrap
from sslcore.methods.base import SSLMethod, register_method
from sslcore.methods.multicrop import count_crops, forward_crops
from sslcore.models.heads.swav_head import SwAVPrototypesHead

log = logging.getLogger(__name__)


_NO_SWAV_HEAD = ("SwAV needs a swav_head: set config.MODEL.HEAD.PARAMS to e.g. "
                 '[["swav_head", {"dims": [2048, 2048, 128], "use_bn": true, "num_clusters": [3000]}]]')


def find_swav_head(model: nn.Module) -> SwAVPrototypesHead:
    """The model's last ``swav_head`` (inside a head chain too).

    Raises:
        ValueError: if the model has none.
    """
    found = [m for m in unwrap(model).modules() if isinstance(m, SwAVPrototypesHead)]
    if not found:
        raise ValueError(_NO_SWAV_HEAD)
    return found[-1]


def swav_head_params(cfg: DictConfig) -> Optional[Dict[str, Any]]:
    """The keyword arguments of the last ``swav_head`` in ``MODEL.HEAD.PARAMS``, or None."""
    entries = OmegaConf.to_container(cfg.MODEL.HEAD.PARAMS, resolve=True) or []
    flat = []
    for entry in entries:
        chain = entry if entry and isinstance(entry[0], (list, tuple)) else [entry]
        flat += [e for e in chain if isinstance(e, (list, tuple)) and len(e) == 2]
    found = [e[1] for e in flat if e[0] == "swav_head"]
    return found[-1] if found else None


def infer_swav_config(cfg: DictConfig, section: str, *, world_size: int) -> Dict[str, Any]:
    """SwAV's derived keys under ``LOSS.<section>`` (pure; shared by swav and swav_momentum).

    Rules: ``num_crops`` from DATA.TRAIN.TRANSFORMS; ``embedding_dim`` and ``num_prototypes`` from
    the swav_head; ``queue.queue_length`` rounded down to a multiple of the global batch
    (BATCHSIZE_PER_REPLICA x world size) and ``local_queue_length`` = its share per rank;
    ``output_dir`` '.' replaced by CHECKPOINT.DIR.

    Raises:
        ValueError: fewer than 2 crops, or no swav_head.
    """
    prefix = f"LOSS.{section}"
    loss_cfg = cfg.LOSS[section]
    crops = count_crops(OmegaConf.to_container(cfg.DATA.TRAIN.TRANSFORMS, resolve=True))
    if crops < 2:
        raise ValueError(f"{section} needs at least 2 crops per image: start DATA.TRAIN.TRANSFORMS "
                         "with ImgPilToMultiCrop (or ImgReplicatePil) and use multicrop_collator")
    head = swav_head_params(cfg)
    if head is None:
        raise ValueError(_NO_SWAV_HEAD)
    clusters = head.get("num_clusters", [3000])
    global_batch = int(cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA) * world_size
    queue = int(loss_cfg.queue.queue_length)
    queue -= queue % global_batch
    out = {f"{prefix}.num_crops": crops, f"{prefix}.embedding_dim": int(head["dims"][-1]),
           f"{prefix}.num_prototypes": [int(clusters)] if isinstance(clusters, int) else list(clusters),
           f"{prefix}.queue.queue_length": queue,
           f"{prefix}.queue.local_queue_length": queue // world_size}
    if str(loss_cfg.output_dir) in (".", ""):
        out[f"{prefix}.output_dir"] = str(cfg.CHECKPOINT.DIR)
    return out


@register_method
class SwAV(SSLMethod):
    """SwAV over multi-crop batches (``multicrop_collator``), with the ``swav_head``.

    Paper: [0] SwAV, Caron et al. 2020, https://arxiv.org/abs/2006.09882

    Args:
        cfg: the resolved config.
        model: the (possibly DDP-wrapped) model; it must contain a swav_head.
        loss: :class:`~sslcore.losses.swav.SwAVLoss`.

    Raises:
        ValueError: no swav_head, or a head that disagrees with ``LOSS.swav_loss``.
    """

    loss_names = ("swav_loss",)

    def __init__(self, cfg: DictConfig, model: nn.Module, loss: Any) -> None:
        super().__init__(cfg, model, loss)
        self.head = find_swav_head(model)
        if self.head.num_clusters != loss.num_prototypes or self.head.embedding_dim != loss.embedding_dim:
            raise ValueError(
                f"the swav_head has num_clusters={self.head.num_clusters}, embedding width "
                f"{self.head.embedding_dim} but LOSS.{loss.config_name} has num_prototypes="
                f"{loss.num_prototypes}, embedding_dim={loss.embedding_dim}; leave them to the "
                "engine's inference or make them agree")
        self.num_crops = loss.num_crops

    @classmethod
    def infer_config(cls, cfg: DictConfig, *, world_size: int) -> Dict[str, Any]:
        """See :func:`infer_swav_config`."""
        return infer_swav_config(cfg, "swav_loss", world_size=world_size)

    def forward(self, task: Any, batch: Dict[str, Any]) -> List[torch.Tensor]:
        """``[embedding (V*B, D), scores_h (V*B, K_h)...]``, rows crop-major over every crop."""
        return forward_crops(self.model, list(batch["data"]))

    def compute_loss(self, task: Any, outputs: List[torch.Tensor],
                     batch: Dict[str, Any]) -> torch.Tensor:
        """Swapped prediction; the loss scores its queue with the current prototypes."""
        prototypes = [layer.weight for layer in self.head.prototypes()]
        return self.loss(outputs, iteration=task.iteration, prototypes=prototypes)

    def normalize_prototypes(self) -> None:
        """L2-normalise the prototypes when ``normalize_last_layer`` asks for it."""
        if self.loss.normalize_last_layer:
            self.head.normalize_prototypes()

    def on_start(self, task: Any) -> None:
        """Normalise the prototypes before the first forward (SwAV's code does it every step)."""
        self.normalize_prototypes()

    def on_update(self, task: Any) -> None:
        """Project the prototypes back onto the unit sphere after the optimizer step."""
        self.normalize_prototypes()
