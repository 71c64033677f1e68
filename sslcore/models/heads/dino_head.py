"""DINO's projection head (registry key ``"dino_head"``, VISSL's name and arguments).

An MLP (Linear, optional BatchNorm, GELU, ..., Linear to a bottleneck), L2 normalisation, then a
weight-normalised Linear layer without bias onto K prototypes. Checkpoint names follow VISSL:
``mlp.<i>.weight`` and ``prototypes0.weight_g`` / ``prototypes0.weight_v``.

Papers:
    - [0] DINO, Caron et al. 2021, https://arxiv.org/abs/2104.14294 (Sec. 3.1 and Appendix)
    - [1] Weight normalization, Salimans & Kingma 2016, https://arxiv.org/abs/1602.07868
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sslcore.models.heads.mlp import flatten_features
from sslcore.models.heads.registry import HEADS


class WeightNormLinear(nn.Module):
    """Linear layer without bias whose rows are ``weight_g * weight_v / ||weight_v||`` (ref. [1]).

    Args:
        in_features: D.
        out_features: K.
        fix_norm: keep ``weight_g`` at 1 (no gradient): every row has norm 1, so the output is
            a cosine similarity scaled by the input norm (DINO's ``normalize_last_layer``).

    Attributes:
        weight_v: (K, D) direction parameter (Linear's default initialisation).
        weight_g: (K, 1) norm parameter, initialised to 1.
    """

    def __init__(self, in_features: int, out_features: int, *, fix_norm: bool = True) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_features, out_features, bias=False).weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=not fix_norm)

    def weight(self) -> torch.Tensor:
        """The effective (K, D) weight."""
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, K)."""
        return F.linear(x, self.weight())


@HEADS.register("dino_head")
class DINOHead(nn.Module):
    """MLP -> L2 normalisation -> weight-normalised prototypes (DINO).

    Paper: [0] DINO, Caron et al. 2021, https://arxiv.org/abs/2104.14294

    Args:
        in_dim: C, the trunk's feature width (2048 for ResNet-50, 384 for DeiT-S).
        num_clusters: [K], the number of prototypes (one set only, as in VISSL).
        use_bn: BatchNorm1d after each hidden Linear layer.
        normalize_last_layer: fix the prototypes' norms to 1 (``weight_g`` without gradient).
        num_layers: Linear layers of the MLP, >= 1 (1: a single Linear to the bottleneck).
        hidden_dim: width of the hidden layers.
        bottleneck_dim: width before the prototypes.

    Raises:
        ValueError: if ``num_clusters`` does not hold exactly one K >= 1, or a size is < 1.

    Example:
        >>> head = DINOHead(in_dim=512, num_clusters=[4096], hidden_dim=512, bottleneck_dim=128)
        >>> head(torch.randn(8, 512)).shape
        torch.Size([8, 4096])
    """

    def __init__(self, in_dim: int, num_clusters: Sequence[int], *, use_bn: bool = False,
                 normalize_last_layer: bool = True, num_layers: int = 3, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256) -> None:
        super().__init__()
        clusters = [int(k) for k in num_clusters]
        if len(clusters) != 1 or clusters[0] < 1:
            raise ValueError(f"dino_head: num_clusters must be one number of prototypes, e.g. "
                             f"[65536]; got {list(num_clusters)}")
        if min(in_dim, num_layers, hidden_dim, bottleneck_dim) < 1:
            raise ValueError("dino_head: in_dim, num_layers, hidden_dim and bottleneck_dim must be "
                             f">= 1, got {in_dim}, {num_layers}, {hidden_dim}, {bottleneck_dim}")
        self.in_dim = int(in_dim)
        widths = [self.in_dim] + [int(hidden_dim)] * (num_layers - 1) + [int(bottleneck_dim)]
        layers: List[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < num_layers - 1:
                if use_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.prototypes0 = WeightNormLinear(int(bottleneck_dim), clusters[0],
                                            fix_norm=normalize_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prototype scores.

        Args:
            x: (B, C) or (B, C, 1, 1) features, C = in_dim.

        Returns:
            (B, K) logits.

        Raises:
            ValueError: if the input does not hold in_dim features per sample.
        """
        x = self.mlp(flatten_features(x, self.in_dim, "dino_head"))
        return self.prototypes0(F.normalize(x, dim=1))
