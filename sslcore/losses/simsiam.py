"""SimSiam's loss: symmetric negative cosine between predictions and stop-gradient projections.

Registry key ``"simsiam_loss"``; config ``LOSS.simsiam_loss`` (VISSL has no SimSiam; the section
follows the BYOL one). With p_v the prediction and z_v the projection of view v::

    D(p, z) = - p / ||p|| . z / ||z||
    loss    = D(p_1, stopgrad(z_2)) / 2 + D(p_2, stopgrad(z_1)) / 2      (averaged over samples)

The stop-gradient is the method's whole point: z receives no gradient through this loss. The
method :class:`sslcore.methods.simsiam.SimSiam` supplies z (the predictor head's input).

Papers:
    - [0] SimSiam, Chen & He 2021, https://arxiv.org/abs/2011.10566 (Eq. 1-4, Algorithm 1)
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.losses.byol import two_view_halves
from sslcore.losses.registry import LOSSES

declare("LOSS.simsiam_loss", {
    "embedding_dim": Key(2048, int, "D, width of predictions and projections; checked against the "
                         "input when > 0, -1 takes it from the input"),
})


@LOSSES.register("simsiam_loss")
class SimSiamLoss(nn.Module):
    """Symmetrised negative cosine similarity with stop-gradient on the projections.

    Paper: [0] SimSiam, Chen & He 2021, https://arxiv.org/abs/2011.10566

    Args:
        embedding_dim: expected D, or -1 for any.

    Raises:
        ValueError: if ``embedding_dim`` is 0 or below -1.

    Example:
        >>> loss_fn = SimSiamLoss(embedding_dim=2048)
        >>> p, z = torch.randn(2 * 8, 2048), torch.randn(2 * 8, 2048)   # view-major rows
        >>> loss = loss_fn(p, z)                                         # scalar in [-1, 1]
    """

    def __init__(self, embedding_dim: int = 2048) -> None:
        super().__init__()
        if embedding_dim == 0 or embedding_dim < -1:
            raise ValueError(f"LOSS.simsiam_loss.embedding_dim must be >= 1 or -1, got {embedding_dim}")
        self.embedding_dim = int(embedding_dim)

    @classmethod
    def from_config(cls, section: Any) -> "SimSiamLoss":
        """Build from ``LOSS.simsiam_loss`` (embedding_dim).

        Raises:
            ValueError: as the constructor.
        """
        if isinstance(section, DictConfig):
            section = OmegaConf.to_container(section, resolve=True)
        return cls(embedding_dim=int(section["embedding_dim"]))

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}"

    def forward(self, prediction: Union[torch.Tensor, Sequence[torch.Tensor]],
                projection: torch.Tensor) -> torch.Tensor:
        """Compute the loss of this rank's samples.

        Args:
            prediction: (2B, D) predictor outputs, view-major (rows i and i + B: one sample).
            projection: (2B, D) projector outputs in the same row order; detached here.

        Returns:
            Scalar loss in [-1, 1] (float64 for float64 input, else float32), the mean over the B
            samples (per-sample, so DDP's gradient averaging equals one process on the global
            batch).

        Raises:
            ValueError: if the shapes differ, are not (2B, D), or D != embedding_dim.
        """
        prediction = two_view_halves(prediction, "SimSiamLoss")
        projection = two_view_halves(projection, "SimSiamLoss")
        if prediction.shape != projection.shape:
            raise ValueError(f"SimSiamLoss: prediction {tuple(prediction.shape)} and projection "
                             f"{tuple(projection.shape)} must have the same shape")
        if self.embedding_dim > 0 and prediction.shape[1] != self.embedding_dim:
            raise ValueError(f"SimSiamLoss: width {prediction.shape[1]} != LOSS.simsiam_loss."
                             f"embedding_dim={self.embedding_dim}; set it to {prediction.shape[1]} or -1")
        dtype = torch.float64 if prediction.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=prediction.device.type, enabled=False):
            p1, p2 = F.normalize(prediction.to(dtype), dim=1).chunk(2)
            z1, z2 = F.normalize(projection.detach().to(dtype), dim=1).chunk(2)
            return -0.5 * ((p1 * z2).sum(dim=1) + (p2 * z1).sum(dim=1)).mean()
