"""VISSL's linear-evaluation head (registry key ``"eval_mlp"``): BatchNorm, then an MLP.

The linear-probe protocol trains this head on frozen trunk features; the BatchNorm in front
standardises each feature, so one learning rate suits every layer probed at once.

Papers:
    - [0] Scaling and Benchmarking Self-Supervised Visual Representation Learning, Goyal et al.
      2019, https://arxiv.org/abs/1905.01235 (linear probes on several layers)
    - [1] SimCLR linear evaluation, Chen et al. 2020, https://arxiv.org/abs/2002.05709
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from sslcore.models.heads.mlp import MLP, flatten_features
from sslcore.models.heads.registry import HEADS


@HEADS.register("eval_mlp")
class LinearEvalMLP(nn.Module):
    """BatchNorm over the input features, then :class:`~sslcore.models.heads.mlp.MLP` of ``dims``.

    Checkpoint names follow VISSL: ``channel_bn.*`` and ``clf.clf.<j>.*``.

    Papers: [0] https://arxiv.org/abs/1905.01235, [1] https://arxiv.org/abs/2002.05709

    Args:
        in_channels: C, features per sample (after pooling and flattening).
        dims: MLP widths; ``dims[0]`` must equal ``in_channels`` and ``dims[-1]`` is the number
            of classes. ``[C, num_classes]`` is a linear classifier.
        batchnorm_eps: BatchNorm eps (``MODEL.HEAD.BATCHNORM_EPS``).
        batchnorm_momentum: BatchNorm momentum (``MODEL.HEAD.BATCHNORM_MOMENTUM``).

    Raises:
        ValueError: if ``dims[0] != in_channels`` or ``dims`` is invalid for :class:`MLP`.

    Example:
        >>> head = LinearEvalMLP(2048, [2048, 1000])
        >>> head(torch.randn(8, 2048, 1, 1)).shape
        torch.Size([8, 1000])
    """

    def __init__(self, in_channels: int, dims: Sequence[int], batchnorm_eps: float = 1e-5,
                 batchnorm_momentum: float = 0.1) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if not dims or dims[0] != in_channels:
            raise ValueError(f"eval_mlp head: dims[0] must equal in_channels={in_channels}, got "
                             f"dims={dims}; write dims=[{in_channels}, <num_classes>]")
        self.in_channels = int(in_channels)
        self.channel_bn = nn.BatchNorm1d(in_channels, eps=batchnorm_eps, momentum=batchnorm_momentum)
        self.clf = MLP(dims, batchnorm_eps=batchnorm_eps, batchnorm_momentum=batchnorm_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise and classify.

        Args:
            x: (B, C) or (B, C, 1, 1) float features, C = in_channels; any (B, *S) with
                prod(S) == C is flattened.

        Returns:
            (B, dims[-1]) float logits.

        Raises:
            ValueError: if the input does not hold ``in_channels`` features per sample.
        """
        return self.clf(self.channel_bn(flatten_features(x, self.in_channels, "eval_mlp head")))
