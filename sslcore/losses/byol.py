"""BYOL's loss: the online network's prediction regresses the target network's projection.

Registry key ``"byol_loss"``; config ``LOSS.byol_loss`` (VISSL's names). With p the online
prediction of one view and z' the target projection of the other view, both L2-normalised::

    L(p, z') = || p - z' ||^2 = 2 - 2 p . z'

symmetrised over the two views: loss = mean over samples of L(p_1, z'_2) + L(p_2, z'_1) (the
paper's L + L~). The target carries no gradient. The target network (a momentum copy of trunk and
projector) belongs to the method, :class:`sslcore.methods.byol.BYOL`, which reads ``momentum``.

Papers:
    - [0] BYOL, Grill et al. 2020, https://arxiv.org/abs/2006.07733 (Eq. 2 and Sec. 3.1)
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.losses.registry import LOSSES

declare("LOSS.byol_loss", {
    "embedding_dim": Key(256, int, "D, width of the prediction and the target projection; checked "
                         "against the input when > 0, -1 takes it from the input"),
    "momentum": Key(0.996, float, "base tau of the target network's EMA; it follows BYOL's cosine "
                    "schedule from this value to 1 over training"),
})


def two_view_halves(x: Union[torch.Tensor, Sequence[torch.Tensor]], who: str) -> torch.Tensor:
    """Check a view-major (2B, D) tensor (or a one-element list of it) and return it.

    Raises:
        ValueError: if it is not 2-D with an even, non-zero number of rows.
    """
    if isinstance(x, (list, tuple)):
        if len(x) != 1:
            raise ValueError(f"{who} takes one tensor per argument, got a list of {len(x)}")
        x = x[0]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[0] % 2:
        raise ValueError(f"{who} expects (2*B, D) rows, view-major [view 0 of samples 0..B-1, "
                         f"view 1 of samples 0..B-1], got {tuple(x.shape)}")
    return x


@LOSSES.register("byol_loss")
class BYOLLoss(nn.Module):
    """Symmetrised normalised-MSE between online predictions and target projections.

    Paper: [0] BYOL, Grill et al. 2020, https://arxiv.org/abs/2006.07733

    Args:
        embedding_dim: expected D, or -1 for any.
        momentum: base EMA coefficient of the target network in [0, 1] (used by the method).

    Raises:
        ValueError: if ``momentum`` is outside [0, 1] or ``embedding_dim`` is 0 or below -1.

    Example:
        >>> loss_fn = BYOLLoss(embedding_dim=256)
        >>> p = torch.randn(2 * 8, 256)        # online predictions, view-major
        >>> z = torch.randn(2 * 8, 256)        # target projections, same rows
        >>> loss = loss_fn(p, z)               # scalar in [0, 8]
    """

    def __init__(self, embedding_dim: int = 256, momentum: float = 0.996) -> None:
        super().__init__()
        if embedding_dim == 0 or embedding_dim < -1:
            raise ValueError(f"LOSS.byol_loss.embedding_dim must be >= 1 or -1, got {embedding_dim}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"LOSS.byol_loss.momentum must be in [0, 1], got {momentum}")
        self.embedding_dim = int(embedding_dim)
        self.momentum = float(momentum)

    @classmethod
    def from_config(cls, section: Any) -> "BYOLLoss":
        """Build from ``LOSS.byol_loss`` (embedding_dim, momentum).

        Raises:
            ValueError: as the constructor.
        """
        if isinstance(section, DictConfig):
            section = OmegaConf.to_container(section, resolve=True)
        return cls(embedding_dim=int(section["embedding_dim"]), momentum=float(section["momentum"]))

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, momentum={self.momentum}"

    def forward(self, prediction: Union[torch.Tensor, Sequence[torch.Tensor]],
                target: torch.Tensor) -> torch.Tensor:
        """Compute the loss of this rank's samples.

        Args:
            prediction: (2B, D) online predictions, view-major (rows i and i + B: one sample).
            target: (2B, D) target projections in the same row order (detached here).

        Returns:
            Scalar loss (float64 for float64 input, else float32): the mean over the B samples of
            the two cross-view terms, each in [0, 4]. Per-sample, so DDP's gradient averaging
            equals one process on the global batch.

        Raises:
            ValueError: if the shapes differ, are not (2B, D), or D != embedding_dim.
        """
        prediction = two_view_halves(prediction, "BYOLLoss")
        target = two_view_halves(target, "BYOLLoss")
        if prediction.shape != target.shape:
            raise ValueError(f"BYOLLoss: prediction {tuple(prediction.shape)} and target "
                             f"{tuple(target.shape)} must have the same shape")
        if self.embedding_dim > 0 and prediction.shape[1] != self.embedding_dim:
            raise ValueError(f"BYOLLoss: width {prediction.shape[1]} != LOSS.byol_loss.embedding_dim="
                             f"{self.embedding_dim}; set it to {prediction.shape[1]} or -1")
        dtype = torch.float64 if prediction.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=prediction.device.type, enabled=False):
            p1, p2 = F.normalize(prediction.to(dtype), dim=1).chunk(2)
            z1, z2 = F.normalize(target.detach().to(dtype), dim=1).chunk(2)
            cross = (2 - 2 * (p1 * z2).sum(dim=1)) + (2 - 2 * (p2 * z1).sum(dim=1))
            return cross.mean()
