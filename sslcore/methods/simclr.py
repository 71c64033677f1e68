"""SimCLR: two (or more) augmented views per image, NT-Xent over the global batch.

- [0] SimCLR, Chen et al. 2020, https://arxiv.org/abs/2002.05709

SimCLR has no state beyond the weights: the method only derives the loss's buffer sizes from
the data config. The loss itself is :class:`sslcore.losses.simclr_info_nce.SimCLRInfoNCELoss`.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from omegaconf import DictConfig

from sslcore.methods.base import SSLMethod, register_method
from sslcore.methods.multicrop import count_crops


@register_method
class SimCLR(SSLMethod):
    """SimCLR: forward all views as one batch, NT-Xent with positives across views."""

    loss_names = ("simclr_info_nce_loss",)

    def __init__(self, cfg: DictConfig, model: Any, loss: Any) -> None:
        super().__init__(cfg, model, loss)
        self.num_views = count_crops(list(cfg.DATA.TRAIN.TRANSFORMS))

    @classmethod
    def infer_config(cls, cfg: DictConfig, *, world_size: int) -> Dict[str, Any]:
        """effective_batch_size = views x BATCHSIZE_PER_REPLICA x world size; world_size."""
        views = count_crops(list(cfg.DATA.TRAIN.TRANSFORMS))
        if views < 2:
            raise ValueError(
                "SimCLR needs at least 2 views per image: add {name: ImgReplicatePil, num_times: 2} "
                "at the start of DATA.TRAIN.TRANSFORMS"
            )
        per_rank = int(cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA) * views
        prefix = "LOSS.simclr_info_nce_loss.buffer_params"
        return {f"{prefix}.effective_batch_size": per_rank * world_size,
                f"{prefix}.world_size": world_size}

    def compute_loss(self, task: Any, outputs: List[torch.Tensor],
                     batch: Dict[str, Any]) -> torch.Tensor:
        """NT-Xent on the head's embeddings (V*B, D), view-major as simclr_collator lays them out."""
        return self.loss(outputs[0], num_views=self.num_views)
