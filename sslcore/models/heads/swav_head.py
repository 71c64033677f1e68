"""SwAV's head (registry key ``"swav_head"``): a projection MLP, L2 normalisation, then prototypes.

The projection maps trunk features to a D-dimensional embedding; each prototype layer is a
bias-free Linear(D, K) whose weight rows are the K prototype vectors, so its output is the
(B, K) matrix of scores between embeddings and prototypes. Several prototype layers (several
entries in ``num_clusters``) give several clusterings of the same embedding ("multi-head" SwAV).
Layer names follow VISSL's checkpoints: ``heads.<i>.projection_head.<j>.*`` and
``heads.<i>.prototypes<h>.weight``.

Papers:
    - [0] SwAV, Caron et al. 2020, https://arxiv.org/abs/2006.09882 (Sec. 3.1, App. A)
"""

from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from sslcore.models.heads.mlp import flatten_features
from sslcore.models.heads.registry import HEADS


@HEADS.register("swav_head")
class SwAVPrototypesHead(nn.Module):
    """Projection MLP + L2 normalisation + one or more prototype layers.

    Paper: [0] SwAV, Caron et al. 2020, https://arxiv.org/abs/2006.09882

    Layer i of the projection maps ``dims[i]`` to ``dims[i + 1]``: Linear, then BatchNorm1d
    (with ``use_bn``) and ReLU. With ``skip_last_bn`` the last Linear layer is bare (the SwAV
    layout ``Linear -> BN -> ReLU -> Linear``).

    Args:
        dims: projection widths [C, hidden..., D]; ``[C]`` alone means no projection (D = C).
        num_clusters: K per prototype layer, e.g. ``[3000]``; an int means one layer; ``[]``
            builds no prototypes (the head then returns only the embedding).
        use_bn: BatchNorm1d after each hidden Linear layer.
        use_bias: Linear layers of the projection have a bias (prototypes never do).
        return_embeddings: put the embedding first in the output list.
        skip_last_bn: leave the last projection layer without BatchNorm and ReLU.
        normalize_feats: L2-normalise the embedding before the prototypes (SwAV: True).
        batchnorm_eps: BatchNorm eps (``MODEL.HEAD.BATCHNORM_EPS``).
        batchnorm_momentum: BatchNorm momentum (``MODEL.HEAD.BATCHNORM_MOMENTUM``).

    Raises:
        ValueError: if ``dims`` is empty or holds a non-positive width, or a K is < 1.

    Example:
        >>> head = SwAVPrototypesHead([512, 512, 128], num_clusters=[3000], use_bn=True)
        >>> embedding, scores = head(torch.randn(4, 512))
        >>> embedding.shape, scores.shape
        (torch.Size([4, 128]), torch.Size([4, 3000]))
    """

    def __init__(self, dims: Sequence[int], num_clusters: Union[int, Sequence[int]] = (3000,), *,
                 use_bn: bool = False, use_bias: bool = True, return_embeddings: bool = True,
                 skip_last_bn: bool = True, normalize_feats: bool = True,
                 batchnorm_eps: float = 1e-5, batchnorm_momentum: float = 0.1) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        clusters = [int(num_clusters)] if isinstance(num_clusters, int) else [int(k) for k in num_clusters]
        if not dims or min(dims) < 1:
            raise ValueError(f"swav_head: 'dims' must list the input width and the projection "
                             f"widths, all >= 1, e.g. [2048, 2048, 128]; got {dims}")
        if clusters and min(clusters) < 1:
            raise ValueError(f"swav_head: every 'num_clusters' entry must be >= 1, got {clusters}")
        self.dims = dims
        self.num_clusters = clusters
        self.normalize_feats = normalize_feats
        self.return_embeddings = return_embeddings
        layers: List[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out, bias=use_bias))
            if i == len(dims) - 2 and skip_last_bn:
                break
            if use_bn:
                layers.append(nn.BatchNorm1d(d_out, eps=batchnorm_eps, momentum=batchnorm_momentum))
            layers.append(nn.ReLU(inplace=True))
        self.projection_head = nn.Sequential(*layers)
        for h, k in enumerate(clusters):
            self.add_module(f"prototypes{h}", nn.Linear(dims[-1], k, bias=False))

    @property
    def embedding_dim(self) -> int:
        """D, the width of the embedding the prototypes score."""
        return self.dims[-1]

    def prototypes(self) -> List[nn.Linear]:
        """The prototype layers in order; layer h has weight (K_h, D)."""
        return [getattr(self, f"prototypes{h}") for h in range(len(self.num_clusters))]

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """L2-normalise every prototype vector (each weight row) in place (SwAV, App. A)."""
        for layer in self.prototypes():
            layer.weight.copy_(F.normalize(layer.weight, dim=1, p=2))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Project, normalise and score.

        Args:
            x: (B, C) or (B, C, 1, 1) float features, C = dims[0].

        Returns:
            ``[embedding (B, D), scores_0 (B, K_0), scores_1 (B, K_1), ...]``; the embedding is
            left out when ``return_embeddings`` is False.

        Raises:
            ValueError: if the input does not hold dims[0] features per sample.
        """
        embedding = self.projection_head(flatten_features(x, self.dims[0], "swav_head"))
        if self.normalize_feats:
            embedding = F.normalize(embedding, dim=1, p=2)
        out = [embedding] if self.return_embeddings else []
        return out + [layer(embedding) for layer in self.prototypes()]
