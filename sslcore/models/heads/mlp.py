"""VISSL's MLP head (registry key ``"mlp"``): Linear layers with optional BatchNorm, ReLU, Dropout.

Used as SimCLR's projection head g(.) (two or three Linear layers with ReLU between).

Papers:
    - [0] SimCLR, Chen et al. 2020, https://arxiv.org/abs/2002.05709 (projection head, Sec. 2.1)
"""

from __future__ import annotations

from typing import List, Sequence, Union

import torch
from torch import nn

from sslcore.models.heads.registry import HEADS


def flatten_features(x: torch.Tensor, expected: int, who: str) -> torch.Tensor:
    """Flatten (B, C) or (B, C, 1, 1)-like features to (B, C) and check C.

    Args:
        x: (B, C) or (B, C, *S) float tensor with prod(C, *S) == ``expected``.
        expected: the feature size the layer was built for.
        who: the layer's name, used in the error message.

    Returns:
        (B, expected) tensor (a view when possible).

    Raises:
        ValueError: if ``x`` has fewer than 2 dimensions or the wrong number of features.
    """
    if x.ndim < 2:
        raise ValueError(f"{who} expects features of shape (B, C) or (B, C, 1, 1), got {tuple(x.shape)}")
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != expected:
        raise ValueError(f"{who} was built for {expected} input features but got input of shape "
                         f"{tuple(x.shape)} ({flat.shape[1]} features); set its first dim to "
                         f"{flat.shape[1]}")
    return flat


@HEADS.register("mlp")
class MLP(nn.Module):
    """A stack of Linear layers, each optionally followed by BatchNorm1d, ReLU and Dropout.

    Layer i maps ``dims[i]`` to ``dims[i + 1]``. After every Linear layer come, in this order and
    when enabled, BatchNorm1d, ReLU and Dropout(p=0.5); with ``skip_last_layer_relu_bn`` the last
    Linear layer has none of them. Layers live in ``self.clf`` (VISSL's checkpoint names
    ``heads.<i>.clf.<j>.weight``). Linear layers keep torch's default initialisation, scaled by
    ``params_multiplier`` (VISSL's ``MODEL.HEAD.PARAMS_MULTIPLIER``, here a per-head argument).

    Typical settings (VISSL recipes):

    - SimCLR projection: ``dims=[2048, 2048, 128], use_relu=True`` (Linear-ReLU-Linear);
    - Barlow Twins / VICReg projector: ``dims=[2048, 8192, 8192, 8192], use_bn=True,
      use_relu=True`` (Barlow Twins adds ``use_bias=False``), the last layer bare
      (``skip_last_layer_relu_bn=True``);
    - BYOL/SimSiam heads: ``use_bn=True, use_relu=True``.

    Paper: [0] SimCLR, Chen et al. 2020, https://arxiv.org/abs/2002.05709

    Args:
        dims: layer widths [C, hidden..., D], at least two entries, all >= 1.
        use_bn: BatchNorm1d after each Linear layer.
        use_relu: ReLU after each Linear layer (after BatchNorm).
        use_dropout: Dropout(0.5) after each Linear layer (after ReLU).
        use_bias: Linear layers have a bias.
        skip_last_layer_relu_bn: leave the last Linear layer bare (VISSL default True).
        batchnorm_eps: BatchNorm eps (``MODEL.HEAD.BATCHNORM_EPS``).
        batchnorm_momentum: BatchNorm momentum (``MODEL.HEAD.BATCHNORM_MOMENTUM``).
        params_multiplier: factor applied to the initial weights and biases of the Linear
            layers (> 0; 1 keeps torch's initialisation).

    Raises:
        ValueError: if ``dims`` has fewer than 2 entries or a non-positive entry, or
            ``params_multiplier`` <= 0.

    Example:
        >>> head = MLP([512, 512, 128], use_relu=True)
        >>> head(torch.randn(4, 512)).shape
        torch.Size([4, 128])
    """

    def __init__(self, dims: Sequence[int], *, use_bn: bool = False, use_relu: bool = False,
                 use_dropout: bool = False, use_bias: bool = True, skip_last_layer_relu_bn: bool = True,
                 batchnorm_eps: float = 1e-5, batchnorm_momentum: float = 0.1,
                 params_multiplier: float = 1.0) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2 or min(dims) < 1:
            raise ValueError(f"mlp head: 'dims' must list at least an input and an output width, "
                             f"all >= 1, e.g. [2048, 128]; got {dims}")
        if not params_multiplier > 0:
            raise ValueError(f"mlp head: params_multiplier must be > 0, got {params_multiplier}")
        self.dims = dims
        layers: List[nn.Module] = []
        last = len(dims) - 2
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out, bias=use_bias))
            if i == last and skip_last_layer_relu_bn:
                continue
            if use_bn:
                layers.append(nn.BatchNorm1d(d_out, eps=batchnorm_eps, momentum=batchnorm_momentum))
            if use_relu:
                layers.append(nn.ReLU(inplace=True))
            if use_dropout:
                layers.append(nn.Dropout())
        self.clf = nn.Sequential(*layers)
        if params_multiplier != 1.0:
            with torch.no_grad():
                for layer in self.clf:
                    if isinstance(layer, nn.Linear):
                        layer.weight.mul_(params_multiplier)
                        if layer.bias is not None:
                            layer.bias.mul_(params_multiplier)

    def forward(self, x: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """Apply the layers.

        Args:
            x: (B, C) or (B, C, 1, 1) float features, C = dims[0]; a list holding one such
                tensor (a trunk's output list) is accepted.

        Returns:
            (B, dims[-1]) tensor.

        Raises:
            ValueError: if the input does not hold dims[0] features per sample, or is a list of
                more than one tensor.
        """
        if isinstance(x, (list, tuple)):
            if len(x) != 1:
                raise ValueError(f"mlp head takes one feature tensor, got a list of {len(x)}")
            x = x[0]
        return self.clf(flatten_features(x, self.dims[0], "mlp head"))
