"""Barlow Twins: two views, one encoder + projector, a cross-correlation loss; no negatives,
no momentum encoder, no state beyond the weights.

- [0] Barlow Twins, Zbontar et al. 2021, https://arxiv.org/abs/2103.03230

Both views go through the model as one batch (``simclr_collator`` stacks them view-major; with
``default_collate`` the two view tensors are concatenated by the model). The loss,
:class:`sslcore.losses.barlow_twins.BarlowTwinsLoss`, gathers the embeddings of every rank.

BatchNorm in the projector (the paper's and VISSL's recipes have it) normalises over the rows a
process sees, both views together: with several processes, use SyncBatchNorm
(``MODEL.SYNC_BN_CONFIG.CONVERT_BN_TO_SYNC_BN``, CUDA) for the statistics of the global batch.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from omegaconf import DictConfig

from sslcore.methods.base import SSLMethod, register_method
from sslcore.methods.multicrop import count_crops


def check_two_views(cfg: DictConfig, method: str) -> None:
    """Raise unless ``DATA.TRAIN.TRANSFORMS`` makes exactly 2 views per image.

    Raises:
        ValueError: naming ``method`` and the fix.
    """
    views = count_crops(list(cfg.DATA.TRAIN.TRANSFORMS))
    if views != 2:
        raise ValueError(f"{method} needs exactly 2 views per image: start DATA.TRAIN.TRANSFORMS "
                         f"with {{name: ImgReplicatePil, num_times: 2}} (found {views} view(s))")


@register_method
class BarlowTwins(SSLMethod):
    """Barlow Twins: the loss of the projector outputs of both views, (2B, D) view-major.

    Args:
        cfg: the resolved config (2 views per image).
        model: the model being trained; its (chained) heads are the projector.
        loss: the loss named by ``LOSS.name``.

    Raises:
        ValueError: if the data does not make exactly 2 views per image.
    """

    loss_names = ("barlow_twins_loss",)
    display_name = "Barlow Twins"

    def __init__(self, cfg: DictConfig, model: Any, loss: Any) -> None:
        super().__init__(cfg, model, loss)
        check_two_views(cfg, self.display_name)

    @classmethod
    def infer_config(cls, cfg: DictConfig, *, world_size: int) -> Dict[str, Any]:
        """Nothing to derive; checks that there are 2 views.

        Raises:
            ValueError: not exactly 2 views.
        """
        check_two_views(cfg, cls.display_name)
        return {}

    def forward(self, task: Any, batch: Dict[str, Any]) -> List[torch.Tensor]:
        """Embeddings of both views, (2B, D) view-major, as the model's one output."""
        data = batch["data"]
        return self.model(data[0] if len(data) == 1 else list(data))
