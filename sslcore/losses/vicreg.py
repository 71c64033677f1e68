"""VICReg's variance-invariance-covariance loss over the global batch.

Registry key ``"vicreg_loss"``; config ``LOSS.vicreg_loss``. VISSL has no VICReg: the keys are
the paper's (``sim_coeff`` lambda, ``std_coeff`` mu, ``cov_coeff`` nu). With z_A, z_B the (N, D)
embeddings of the two views of all N images of the global batch::

    invariance  s = mean over N*D of (z_A - z_B)^2                        (MSE)
    variance    v(Z) = mean_j relu(1 - sqrt(Var(Z_:,j) + eps))            (unbiased Var)
    covariance  c(Z) = sum_{i != j} Cov(Z)_ij^2 / D,  Cov = (Z - mean)^T (Z - mean) / (N - 1)

    loss = sim_coeff * s + std_coeff * (v(z_A) + v(z_B)) / 2 + cov_coeff * (c(z_A) + c(z_B))

as in the authors' code (the variance term is averaged over the two views, the covariance term
summed). Every rank gathers both views from all ranks (with gradients) and computes the same loss
on the global batch, so DDP training equals one process on the whole batch.

Papers:
    - [0] VICReg, Bardes et al. 2021, https://arxiv.org/abs/2105.04906 (Eq. 1-6; lambda = mu = 25,
      nu = 1, eps = 1e-4)
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.engine.distributed import gather_with_grad
from sslcore.losses.barlow_twins import off_diagonal, split_two_views
from sslcore.losses.registry import LOSSES

declare("LOSS.vicreg_loss", {
    "sim_coeff": Key(25.0, float, "lambda: weight of the invariance (MSE) term, >= 0"),
    "std_coeff": Key(25.0, float, "mu: weight of the variance (hinge on the std) term, >= 0"),
    "cov_coeff": Key(1.0, float, "nu: weight of the covariance (off-diagonal) term, >= 0"),
    "eps": Key(1e-4, float, "added to the variance before the square root (> 0)"),
    "embedding_dim": Key(-1, int, "D, the projector's output width; checked against the input "
                         "when > 0, -1 takes it from the input"),
})


def variance_term(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``mean_j relu(1 - sqrt(Var(z[:, j]) + eps))`` with the unbiased variance.

    Args:
        z: (N, D) float, N >= 2.
        eps: added to the variance.

    Returns:
        Scalar.
    """
    return F.relu(1.0 - torch.sqrt(z.var(dim=0) + eps)).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal entries of the (D, D) covariance of ``z``, divided by D.

    Args:
        z: (N, D) float, N >= 2.

    Returns:
        Scalar.
    """
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.t() @ centred / (n - 1)
    return off_diagonal(cov).pow(2).sum() / d


@LOSSES.register("vicreg_loss")
class VICRegLoss(nn.Module):
    """VICReg: invariance between the views, variance kept up, covariance pushed down.

    Paper: [0] VICReg, Bardes et al. 2021, https://arxiv.org/abs/2105.04906

    Args:
        sim_coeff: lambda (>= 0).
        std_coeff: mu (>= 0).
        cov_coeff: nu (>= 0).
        eps: variance epsilon (> 0).
        embedding_dim: expected D, or -1 for any.

    Raises:
        ValueError: for a negative coefficient, a non-positive ``eps`` or an ``embedding_dim``
            of 0 or below -1.

    Example:
        >>> loss_fn = VICRegLoss()
        >>> z = torch.randn(2 * 16, 64)        # view 0 of 16 images, then view 1
        >>> loss = loss_fn(z)                  # scalar
    """

    def __init__(self, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0,
                 eps: float = 1e-4, embedding_dim: int = -1) -> None:
        super().__init__()
        for name, value in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff),
                            ("cov_coeff", cov_coeff)):
            if value < 0:
                raise ValueError(f"LOSS.vicreg_loss.{name} must be >= 0, got {value}")
        if not eps > 0:
            raise ValueError(f"LOSS.vicreg_loss.eps must be > 0, got {eps}")
        if embedding_dim == 0 or embedding_dim < -1:
            raise ValueError(f"LOSS.vicreg_loss.embedding_dim must be >= 1 or -1, got {embedding_dim}")
        self.sim_coeff, self.std_coeff, self.cov_coeff = float(sim_coeff), float(std_coeff), float(cov_coeff)
        self.eps, self.embedding_dim = float(eps), int(embedding_dim)

    @classmethod
    def from_config(cls, section: Any) -> "VICRegLoss":
        """Build from ``LOSS.vicreg_loss``."""
        if isinstance(section, DictConfig):
            section = OmegaConf.to_container(section, resolve=True)
        return cls(sim_coeff=float(section["sim_coeff"]), std_coeff=float(section["std_coeff"]),
                   cov_coeff=float(section["cov_coeff"]), eps=float(section["eps"]),
                   embedding_dim=int(section["embedding_dim"]))

    def extra_repr(self) -> str:
        return (f"sim_coeff={self.sim_coeff}, std_coeff={self.std_coeff}, "
                f"cov_coeff={self.cov_coeff}, eps={self.eps}")

    def forward(self, embedding: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """Compute the loss on the global batch.

        Args:
            embedding: (2B, D) projector outputs of this rank, view-major (view 0 of the B
                images, then view 1); every rank must hold the same B.

        Returns:
            Scalar loss, identical on every rank.

        Raises:
            ValueError: bad shape, D != embedding_dim, or fewer than 2 images in the global batch.
        """
        z_a, z_b = split_two_views(embedding, self.embedding_dim, "LOSS.vicreg_loss")
        z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
        if z_a.shape[0] < 2:
            raise ValueError("LOSS.vicreg_loss needs at least 2 images in the global batch "
                             "(variances); raise DATA.TRAIN.BATCHSIZE_PER_REPLICA")
        with torch.autocast(device_type=z_a.device.type, enabled=False):
            invariance = F.mse_loss(z_a, z_b)
            variance = (variance_term(z_a, self.eps) + variance_term(z_b, self.eps)) / 2
            covariance = covariance_term(z_a) + covariance_term(z_b)
        return self.sim_coeff * invariance + self.std_coeff * variance + self.cov_coeff * covariance
