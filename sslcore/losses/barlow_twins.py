"""Barlow Twins' redundancy-reduction loss over the global batch.

Registry key ``"barlow_twins_loss"``; config ``LOSS.barlow_twins_loss`` (VISSL's names). With
z_A, z_B the (N, D) embeddings of the two views of all N images of the global batch, each
standardised per dimension over the batch (mean 0, variance 1: ``(z - mean) / sqrt(var + eps)``,
biased variance, eps = 1e-5, as the paper's non-affine BatchNorm), the cross-correlation is
``C = z_A^T z_B / N`` (D x D) and::

    loss = scale_loss * ( sum_i (1 - C_ii)^2  +  lambda_ * sum_{i != j} C_ij^2 )

Every rank gathers both views from all ranks (with gradients) and computes the same loss on the
global batch, so training with DDP's gradient averaging equals one process on the whole batch.

Two places where VISSL's implementation differs from the paper, and this one follows the paper:
VISSL standardises both views together (one mean/std over 2N rows) and divides C by 2N.

Papers:
    - [0] Barlow Twins, Zbontar et al. 2021, https://arxiv.org/abs/2103.03230 (Eq. 1-2; lambda
      5.1e-3; scale_loss 1/32 ~ 0.024 in the paper's first code release)
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple, Union

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.engine.distributed import gather_with_grad
from sslcore.losses.registry import LOSSES

declare("LOSS.barlow_twins_loss", {
    "lambda_": Key(0.0051, float, "weight of the off-diagonal (redundancy) term, >= 0"),
    "scale_loss": Key(0.024, float, "constant factor on the whole loss (> 0; 1/32 in the paper's "
                      "first code release)"),
    "embedding_dim": Key(8192, int, "D, the projector's output width; checked against the input "
                         "when > 0, -1 takes it from the input"),
})


def split_two_views(embedding: Union[torch.Tensor, Sequence[torch.Tensor]], embedding_dim: int,
                    who: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Check a view-major (2B, D) embedding and return its two (B, D) halves, in float32/64.

    Args:
        embedding: (2B, D) rows [view 0 of samples 0..B-1, view 1 of samples 0..B-1] (what
            ``simclr_collator`` + one forward pass give), or a one-element list of it.
        embedding_dim: expected D, or -1 for any.
        who: the loss's config path, used in messages.

    Returns:
        ``(z_a, z_b)``, each (B, D); float16/bfloat16 input is cast to float32.

    Raises:
        ValueError: a list of several tensors, a shape that is not (2B, D), or D !=
            ``embedding_dim``.
    """
    if isinstance(embedding, (list, tuple)):
        if len(embedding) != 1:
            raise ValueError(f"{who} takes one embedding tensor, got a list of {len(embedding)}")
        embedding = embedding[0]
    if embedding.ndim != 2 or embedding.shape[0] == 0 or embedding.shape[0] % 2:
        raise ValueError(f"{who} expects (2*B, D) embeddings, view-major [view 0 of samples "
                         f"0..B-1, view 1 of samples 0..B-1], got {tuple(embedding.shape)}")
    if embedding_dim > 0 and embedding.shape[1] != embedding_dim:
        raise ValueError(f"{who}: embedding width {embedding.shape[1]} != {who}.embedding_dim="
                         f"{embedding_dim}; set it to {embedding.shape[1]} or -1")
    if embedding.dtype not in (torch.float32, torch.float64):
        embedding = embedding.float()
    half = embedding.shape[0] // 2
    return embedding[:half], embedding[half:]


def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standardise every column over the rows: ``(z - mean) / sqrt(var + eps)``, biased variance.

    Args:
        z: (N, D) float.
        eps: added to the variance.

    Returns:
        (N, D) tensor with column means 0 and variances var / (var + eps).
    """
    centred = z - z.mean(dim=0)
    return centred / torch.sqrt(centred.pow(2).mean(dim=0) + eps)


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square (D, D) matrix as a flat (D*D - D,) tensor.

    Raises:
        ValueError: if ``matrix`` is not square.
    """
    n, m = matrix.shape
    if n != m:
        raise ValueError(f"off_diagonal needs a square matrix, got {tuple(matrix.shape)}")
    return matrix.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


@LOSSES.register("barlow_twins_loss")
class BarlowTwinsLoss(nn.Module):
    """Barlow Twins: drive the views' cross-correlation matrix to the identity.

    Paper: [0] Barlow Twins, Zbontar et al. 2021, https://arxiv.org/abs/2103.03230

    Args:
        lambda_: weight of the off-diagonal terms (>= 0).
        scale_loss: factor on the whole loss (> 0).
        embedding_dim: expected D, or -1 for any.
        eps: added to the variance when standardising (1e-5 as the paper's BatchNorm).

    Raises:
        ValueError: for a negative ``lambda_``, a non-positive ``scale_loss``, or an
            ``embedding_dim`` of 0 or below -1.

    Example:
        >>> loss_fn = BarlowTwinsLoss(lambda_=0.0051, scale_loss=0.024, embedding_dim=128)
        >>> z = torch.randn(2 * 16, 128)       # view 0 of 16 images, then view 1
        >>> loss = loss_fn(z)                  # scalar
    """

    def __init__(self, lambda_: float = 0.0051, scale_loss: float = 0.024, embedding_dim: int = 8192,
                 eps: float = 1e-5) -> None:
        super().__init__()
        if lambda_ < 0:
            raise ValueError(f"LOSS.barlow_twins_loss.lambda_ must be >= 0, got {lambda_}")
        if not scale_loss > 0:
            raise ValueError(f"LOSS.barlow_twins_loss.scale_loss must be > 0, got {scale_loss}")
        if embedding_dim == 0 or embedding_dim < -1:
            raise ValueError(f"LOSS.barlow_twins_loss.embedding_dim must be >= 1 or -1, got "
                             f"{embedding_dim}")
        self.lambda_, self.scale_loss = float(lambda_), float(scale_loss)
        self.embedding_dim, self.eps = int(embedding_dim), float(eps)

    @classmethod
    def from_config(cls, section: Any) -> "BarlowTwinsLoss":
        """Build from ``LOSS.barlow_twins_loss`` (``lambda_``, ``scale_loss``, ``embedding_dim``)."""
        if isinstance(section, DictConfig):
            section = OmegaConf.to_container(section, resolve=True)
        return cls(lambda_=float(section["lambda_"]), scale_loss=float(section["scale_loss"]),
                   embedding_dim=int(section["embedding_dim"]))

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}, scale_loss={self.scale_loss}, embedding_dim={self.embedding_dim}"

    def forward(self, embedding: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """Compute the loss on the global batch.

        Args:
            embedding: (2B, D) projector outputs of this rank, view-major (see
                :func:`split_two_views`); every rank must hold the same B.

        Returns:
            Scalar loss, identical on every rank (float32, or float64 for float64 input).

        Raises:
            ValueError: bad shape, D != embedding_dim, or fewer than 2 images in the global batch.
        """
        z_a, z_b = split_two_views(embedding, self.embedding_dim, "LOSS.barlow_twins_loss")
        z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
        n = z_a.shape[0]
        if n < 2:
            raise ValueError("LOSS.barlow_twins_loss needs at least 2 images in the global batch "
                             "to standardise the embeddings; raise DATA.TRAIN.BATCHSIZE_PER_REPLICA")
        with torch.autocast(device_type=z_a.device.type, enabled=False):
            c = standardize(z_a, self.eps).t() @ standardize(z_b, self.eps) / n
            on_diag = (torch.diagonal(c) - 1).pow(2).sum()
            off_diag = off_diagonal(c).pow(2).sum()
        return self.scale_loss * (on_diag + self.lambda_ * off_diag)
