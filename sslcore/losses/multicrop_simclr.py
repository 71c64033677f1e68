"""SimCLR's InfoNCE extended to multi-crop: every crop of an image is a positive of every other.

Registry key ``"multicrop_simclr_info_nce_loss"``; config ``LOSS.multicrop_simclr_info_nce_loss``
(VISSL names: ``temperature``, ``num_crops``, ``buffer_params``).

With V crops per image, z the L2-normalised embeddings and T the temperature, anchor a (crop c
of image i) has the V - 1 other crops of image i as positives and every crop of every other
image in the global batch as negatives N(a). Each positive p is its own term (VISSL's
formulation; the anchor's other positives are not in the denominator)::

    loss = mean_{a, p} -log( exp(z_a . z_p / T) / (exp(z_a . z_p / T) + sum_{n in N(a)} exp(z_a . z_n / T)) )

Difference from VISSL: VISSL's masks keep only the negatives held by the anchor's own rank,
so its loss depends on how the batch is split over processes; here the negatives come from every
rank, so 2 processes compute what 1 process computes on the whole batch (on 1 process the two
agree).

Papers:
    - [0] SimCLR, Chen et al. 2020, https://arxiv.org/abs/2002.05709
    - [1] SwAV (multi-crop), Caron et al. 2020, https://arxiv.org/abs/2006.09882
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.engine.distributed import gather_with_grad, get_rank, get_world_size
from sslcore.losses.registry import LOSSES

declare("LOSS.multicrop_simclr_info_nce_loss", {
    "temperature": Key(0.1, float, "softmax temperature T (> 0)"),
    "num_crops": Key(2, int, "V, crops per image; inferred from DATA.TRAIN.TRANSFORMS"),
    "buffer_params": {
        "embedding_dim": Key(-1, int, "D; checked against the input when > 0; -1 takes it from "
                             "the input (VISSL's default is 128)"),
        "effective_batch_size": Key(-1, int, "images over all ranks, world_size * B (VISSL's "
                                    "meaning for this loss); checked when > 0; -1 = inferred"),
        "world_size": Key(-1, int, "number of processes; checked when > 0; -1 = inferred"),
    },
})

_BUFFER_KEYS = ("embedding_dim", "effective_batch_size", "world_size")


@LOSSES.register("multicrop_simclr_info_nce_loss")
class MultiCropSimCLRInfoNCELoss(nn.Module):
    """Multi-crop InfoNCE: one term per (anchor, positive) pair, negatives from the global batch.

    Papers: [0] https://arxiv.org/abs/2002.05709, [1] https://arxiv.org/abs/2006.09882

    Args:
        temperature: T > 0.
        num_crops: V >= 2, crops per image.
        buffer_params: VISSL's ``{embedding_dim, effective_batch_size, world_size}``; each -1
            (free) or the value the input must have.

    Raises:
        ValueError: ``temperature`` <= 0, ``num_crops`` < 2 or an unknown buffer key.

    Example:
        >>> loss_fn = MultiCropSimCLRInfoNCELoss(temperature=0.1, num_crops=4)
        >>> z = torch.randn(4 * 8, 128)   # rows: crop 0 of images 0..7, crop 1, ..., crop 3
        >>> loss_fn(z)                    # scalar
    """

    def __init__(self, temperature: float = 0.1, num_crops: int = 2, *,
                 buffer_params: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__()
        where = "LOSS.multicrop_simclr_info_nce_loss"
        if not temperature > 0:
            raise ValueError(f"{where}.temperature must be > 0, got {temperature}")
        if num_crops < 2:
            raise ValueError(f"{where}.num_crops must be >= 2 (positives are the other crops), got "
                             f"{num_crops}; start DATA.TRAIN.TRANSFORMS with ImgPilToMultiCrop")
        params = {k: -1 for k in _BUFFER_KEYS}
        for key, value in dict(buffer_params or {}).items():
            if key not in _BUFFER_KEYS:
                raise ValueError(f"{where}.buffer_params.{key} is unknown; valid keys: "
                                 f"{', '.join(_BUFFER_KEYS)}")
            params[key] = int(value)
        self.temperature, self.num_crops = float(temperature), int(num_crops)
        self.embedding_dim = params["embedding_dim"]
        self.effective_batch_size = params["effective_batch_size"]
        self.world_size = params["world_size"]

    @classmethod
    def from_config(cls, section: Any) -> "MultiCropSimCLRInfoNCELoss":
        """Build from ``LOSS.multicrop_simclr_info_nce_loss``.

        Raises:
            ValueError: as the constructor.
        """
        if isinstance(section, DictConfig):
            section = OmegaConf.to_container(section, resolve=True)
        return cls(temperature=float(section["temperature"]), num_crops=int(section["num_crops"]),
                   buffer_params=section.get("buffer_params") or {})

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, num_crops={self.num_crops}"

    def _check(self, embedding: torch.Tensor, world: int) -> int:
        where = "MultiCropSimCLRInfoNCELoss"
        if embedding.ndim != 2:
            raise ValueError(f"{where} expects embeddings (V*B, D), got {tuple(embedding.shape)}")
        rows, dim = embedding.shape
        if rows == 0 or rows % self.num_crops:
            raise ValueError(f"{where}: {rows} rows cannot be split into num_crops={self.num_crops} "
                             "crop blocks; rows must be V*B, crop-major")
        batch = rows // self.num_crops
        checks = [("embedding_dim", self.embedding_dim, dim), ("world_size", self.world_size, world),
                  ("effective_batch_size", self.effective_batch_size, batch * world)]
        for key, expected, got in checks:
            if expected > 0 and got != expected:
                raise ValueError(f"{where}: {key} is {got} but LOSS.multicrop_simclr_info_nce_loss."
                                 f"buffer_params.{key}={expected}; set it to {got} or -1")
        return batch

    def forward(self, embedding: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """Loss of this rank's anchors against the crops of every rank.

        Args:
            embedding: (V*B, D) this rank's embeddings, crop-major (crop 0 of images 0..B-1,
                crop 1, ...), as the multi-crop forward gives them; every rank holds the same
                V*B. A one-element list (a model's output) is accepted.

        Returns:
            Scalar loss (float32; float64 for float64 input), the mean over this rank's
            V*B*(V-1) (anchor, positive) pairs; gradients reach every rank's embeddings.

        Raises:
            ValueError: if the shape does not fit ``num_crops`` or the buffer parameters.
        """
        if isinstance(embedding, (list, tuple)):
            if len(embedding) != 1:
                raise ValueError(f"MultiCropSimCLRInfoNCELoss takes one embedding tensor, got "
                                 f"{len(embedding)}")
            embedding = embedding[0]
        world, rank = get_world_size(), get_rank()
        batch = self._check(embedding, world)
        if embedding.dtype not in (torch.float32, torch.float64):
            embedding = embedding.float()
        local = F.normalize(embedding, p=2, dim=1)
        everyone = gather_with_grad(local)
        with torch.autocast(device_type=local.device.type, enabled=False):
            logits = local @ everyone.t() / self.temperature
        rows = local.shape[0]
        device = local.device
        row_image = rank * batch + torch.arange(rows, device=device) % batch
        cols = torch.arange(rows * world, device=device)
        col_image = (cols // rows) * batch + (cols % rows) % batch
        same = row_image[:, None] == col_image[None, :]
        is_self = cols[None, :] == (rank * rows + torch.arange(rows, device=device))[:, None]
        log_negatives = torch.logsumexp(logits.masked_fill(same, float("-inf")), dim=1, keepdim=True)
        positive = same & ~is_self
        per_pair = torch.logaddexp(logits, log_negatives) - logits
        return per_pair[positive].mean()
