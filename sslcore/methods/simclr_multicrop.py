"""SimCLR with multi-crop: V crops of several resolutions per image, every crop a positive.

- [0] SimCLR, Chen et al. 2020, https://arxiv.org/abs/2002.05709
- [1] SwAV (multi-crop), Caron et al. 2020, https://arxiv.org/abs/2006.09882

The crops come from ``ImgPilToMultiCrop`` and ``multicrop_collator``; the model runs once over
all of them (trunk per resolution, heads once) and the loss is
:class:`sslcore.losses.multicrop_simclr.MultiCropSimCLRInfoNCELoss`. No state besides the weights.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from omegaconf import DictConfig, OmegaConf

from sslcore.methods.base import SSLMethod, register_method
from sslcore.methods.multicrop import count_crops, forward_crops


@register_method
class MultiCropSimCLR(SSLMethod):
    """Multi-crop SimCLR over ``multicrop_collator`` batches.

    Papers: [0] https://arxiv.org/abs/2002.05709, [1] https://arxiv.org/abs/2006.09882
    """

    loss_names = ("multicrop_simclr_info_nce_loss",)

    @classmethod
    def infer_config(cls, cfg: DictConfig, *, world_size: int) -> Dict[str, Any]:
        """num_crops from TRANSFORMS; buffer_params: effective_batch_size = BATCHSIZE_PER_REPLICA x
        world size (images, as VISSL counts them for this loss), world_size.

        Raises:
            ValueError: fewer than 2 crops per image.
        """
        crops = count_crops(OmegaConf.to_container(cfg.DATA.TRAIN.TRANSFORMS, resolve=True))
        if crops < 2:
            raise ValueError("multicrop_simclr_info_nce_loss needs at least 2 crops per image: start "
                             "DATA.TRAIN.TRANSFORMS with {name: ImgPilToMultiCrop, total_num_crops: 6, "
                             "num_crops: [2, 4], size_crops: [160, 96], crop_scales: [[0.08, 1], "
                             "[0.05, 0.14]]} and use COLLATE_FUNCTION: multicrop_collator")
        prefix = "LOSS.multicrop_simclr_info_nce_loss"
        return {f"{prefix}.num_crops": crops,
                f"{prefix}.buffer_params.effective_batch_size":
                    int(cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA) * world_size,
                f"{prefix}.buffer_params.world_size": world_size}

    def forward(self, task: Any, batch: Dict[str, Any]) -> List[torch.Tensor]:
        """Embeddings (V*B, D) of every crop, crop-major."""
        return forward_crops(self.model, list(batch["data"]))

    def compute_loss(self, task: Any, outputs: List[torch.Tensor],
                     batch: Dict[str, Any]) -> torch.Tensor:
        """Multi-crop InfoNCE on the head's embeddings."""
        return self.loss(outputs[0])
