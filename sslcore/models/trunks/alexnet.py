"""The AlexNet trunks VISSL uses for its older pretext tasks (registry keys ``alexnet_*``).

Five variants, each registered under VISSL's name, each with VISSL's feature names
``conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5, flatten`` and module layout
(``_feature_blocks.<i>`` a ModuleList; inside a conv block ``0`` is the Conv2d, ``1`` the
BatchNorm2d when there is one), so VISSL AlexNet checkpoints load by name:

===================== ===== ===================================================================
name                  input layers
===================== ===== ===================================================================
alexnet_bvlc          RGB   Caffe's BVLC reference: conv 96-256-384-384-256, grouped conv2/4/5,
                            LocalResponseNorm before pool1/pool2, no BatchNorm [0]
alexnet_jigsaw        RGB   as BVLC with conv1 stride 2 (64 px tiles), LRN after pool1/pool2,
                            BatchNorm on conv3-5 [1]
alexnet_rotnet        RGB   conv 64-192-384-256-256, BatchNorm everywhere, no groups [2]
alexnet_deepcluster   RGB   fixed Sobel filter (grayscale + 2 gradients, not trained) in
                            front, conv 96-256-384-384-256, BatchNorm everywhere [3]
alexnet_colorization  Lab   only the L channel (1 input channel), BVLC layout with BatchNorm [4]
===================== ===== ===================================================================

Papers:
    - [0] AlexNet, Krizhevsky et al. 2012, https://papers.nips.cc/paper/4824
    - [1] Jigsaw puzzles, Noroozi and Favaro 2016, https://arxiv.org/abs/1603.09246
    - [2] RotNet, Gidaris et al. 2018, https://arxiv.org/abs/1803.07728
    - [3] DeepCluster, Caron et al. 2018, https://arxiv.org/abs/1807.05520
    - [4] Colorization, Zhang et al. 2016, https://arxiv.org/abs/1603.08511
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from sslcore.models.trunks.feature_blocks import forward_feature_blocks
from sslcore.models.trunks.registry import TRUNKS

FEATURE_NAMES = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "flatten")


@dataclass(frozen=True)
class AlexNetSpec:
    """One AlexNet variant.

    Attributes:
        convs: per conv layer (out_channels, kernel, stride, padding, groups).
        batchnorm: per conv layer, whether BatchNorm2d follows the conv.
        lrn: where LocalResponseNorm sits in pool1/pool2: ``"before_pool"``, ``"after_pool"``
            or None.
        input_mode: ``"rgb"``, ``"sobel"`` (RGB through a fixed Sobel filter) or ``"lab_l"``
            (the L channel of a Lab image).
        reference_size: the input side the variant was designed for (227 for Caffe's BVLC layout,
            64 for jigsaw tiles, else 224); ``feature_channels["flatten"]`` is given for it.
    """

    convs: Tuple[Tuple[int, int, int, int, int], ...]
    batchnorm: Tuple[bool, ...]
    lrn: Optional[str]
    input_mode: str
    reference_size: int = 224


_BVLC_CONVS = ((96, 11, 4, 0, 1), (256, 5, 1, 2, 2), (384, 3, 1, 1, 1), (384, 3, 1, 1, 2),
               (256, 3, 1, 1, 2))
SPECS: Dict[str, AlexNetSpec] = {
    "alexnet_bvlc": AlexNetSpec(_BVLC_CONVS, (False,) * 5, "before_pool", "rgb", reference_size=227),
    "alexnet_jigsaw": AlexNetSpec(((96, 11, 2, 0, 1),) + _BVLC_CONVS[1:],
                                  (False, False, True, True, True), "after_pool", "rgb",
                                  reference_size=64),
    "alexnet_rotnet": AlexNetSpec(((64, 11, 4, 2, 1), (192, 5, 1, 2, 1), (384, 3, 1, 1, 1),
                                   (256, 3, 1, 1, 1), (256, 3, 1, 1, 1)), (True,) * 5, None, "rgb"),
    "alexnet_deepcluster": AlexNetSpec(((96, 11, 4, 2, 1), (256, 5, 1, 2, 1), (384, 3, 1, 1, 1),
                                        (384, 3, 1, 1, 1), (256, 3, 1, 1, 1)), (True,) * 5, None,
                                       "sobel"),
    "alexnet_colorization": AlexNetSpec(_BVLC_CONVS, (True,) * 5, None, "lab_l", reference_size=227),
}
_IN_CHANNELS = {"rgb": 3, "sobel": 2, "lab_l": 1}


def make_sobel_filter() -> nn.Sequential:
    """A fixed (not trained) RGB -> (dx, dy) Sobel gradient filter, DeepCluster's input layer.

    Returns:
        ``Sequential(grayscale 1x1 conv, Sobel 3x3 conv)`` mapping (B, 3, H, W) to (B, 2, H, W);
        its parameters have ``requires_grad=False``.
    """
    grayscale = nn.Conv2d(3, 1, kernel_size=1)
    sobel = nn.Conv2d(1, 2, kernel_size=3, padding=1)
    with torch.no_grad():
        grayscale.weight.fill_(1.0 / 3.0)
        grayscale.bias.zero_()
        gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        sobel.weight.copy_(torch.stack([gx, gx.t()])[:, None])
        sobel.bias.zero_()
    block = nn.Sequential(grayscale, sobel)
    block.requires_grad_(False)
    return block


def _pool(lrn: Optional[str]) -> nn.Module:
    pool = nn.MaxPool2d(kernel_size=3, stride=2)
    if lrn is None:
        return pool
    norm = nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75)
    return nn.Sequential(norm, pool) if lrn == "before_pool" else nn.Sequential(pool, norm)


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class AlexNet(nn.Module):
    """An AlexNet trunk returning VISSL's named features (see the module docstring).

    Features for a (B, 3, H, W) input (``alexnet_colorization`` also takes (B, 1, H, W), the L
    channel): ``conv1..conv5`` and ``pool1, pool2, pool5`` are (B, C, H', W'), ``flatten`` is
    (B, C5 * H5 * W5); :meth:`feature_shapes` gives exact sizes, e.g. ``flatten`` is 9216
    (256 x 6 x 6) for 224 px with rotnet/deepcluster and for 227 px with bvlc/colorization (their
    conv1 has no padding: 6400 at 224 px), 1024 for jigsaw's 64 px tiles.

    Args:
        variant: one of :data:`SPECS` (``alexnet_bvlc``, ``alexnet_jigsaw``, ``alexnet_rotnet``,
            ``alexnet_deepcluster``, ``alexnet_colorization``).

    Raises:
        ValueError: for an unknown variant.

    Example:
        >>> trunk = AlexNet(variant="alexnet_rotnet")
        >>> conv5, flat = trunk(torch.randn(2, 3, 224, 224), out_feat_keys=["conv5", "flatten"])
        >>> conv5.shape, flat.shape
        (torch.Size([2, 256, 13, 13]), torch.Size([2, 9216]))
    """

    def __init__(self, *, variant: str) -> None:
        super().__init__()
        if variant not in SPECS:
            raise ValueError(f"MODEL.TRUNK.NAME={variant!r} is not an AlexNet variant; use one of "
                             f"{sorted(SPECS)}")
        spec = SPECS[variant]
        self.variant, self.spec = variant, spec
        if spec.input_mode == "sobel":
            self.sobel = make_sobel_filter()
        blocks: List[nn.Module] = []
        in_ch = _IN_CHANNELS[spec.input_mode]
        for index, ((out_ch, k, s, p, g), bn) in enumerate(zip(spec.convs, spec.batchnorm)):
            layers: List[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel_size=k, stride=s, padding=p,
                                                 groups=g)]
            if bn:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
            blocks.append(nn.Sequential(*layers))
            if index in (0, 1):
                blocks.append(_pool(spec.lrn))
            in_ch = out_ch
        blocks += [nn.MaxPool2d(kernel_size=3, stride=2), nn.Flatten(1)]
        self._feature_blocks = nn.ModuleList(blocks)
        shapes = self.feature_shapes(spec.reference_size)
        self.feature_channels: Dict[str, int] = {n: s[0] for n, s in shapes.items()}

    @classmethod
    def from_config(cls, trunk_cfg: Any) -> "AlexNet":
        """Build the variant named by ``MODEL.TRUNK.NAME`` (AlexNets take no other keys)."""
        return cls(variant=str(trunk_cfg.NAME))

    @property
    def feature_names(self) -> List[str]:
        """Every feature name ``forward`` accepts, shallowest first."""
        return list(FEATURE_NAMES)

    @property
    def default_eval_feature(self) -> str:
        """The feature evaluated when LINEAR_EVAL_FEAT_POOL_OPS_MAP names none (``flatten``)."""
        return "flatten"

    def feature_shapes(self, input_size: Union[int, Tuple[int, int]]) -> Dict[str, Tuple[int, ...]]:
        """Per-sample output shape of every feature for an input size, without running the net.

        Args:
            input_size: H (square) or (H, W) in pixels.

        Returns:
            ``{name: (C, H', W')}`` and ``{"flatten": (C * H' * W',)}``.
        """
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        shapes: Dict[str, Tuple[int, ...]] = {}
        for index, (out_ch, k, s, p, _) in enumerate(self.spec.convs):
            h, w = _out(h, k, s, p), _out(w, k, s, p)
            shapes[f"conv{index + 1}"] = (out_ch, h, w)
            if index in (0, 1, 4):
                h, w = _out(h, 3, 2, 0), _out(w, 3, 2, 0)
                shapes[f"pool{index + 1}"] = (out_ch, h, w)
        shapes["flatten"] = (shapes["pool5"][0] * h * w,)
        return {name: shapes[name] for name in FEATURE_NAMES}

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.spec.input_mode
        ok = x.ndim == 4 and (x.shape[1] == 3 or (mode == "lab_l" and x.shape[1] == 1))
        if not ok:
            wanted = "(B, 3, H, W) Lab or (B, 1, H, W) L" if mode == "lab_l" else "(B, 3, H, W) RGB"
            raise ValueError(f"{self.variant} expects {wanted} images, got {tuple(x.shape)}")
        if mode == "sobel":
            return self.sobel(x)
        if mode == "lab_l":
            return x[:, :1]
        return x

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        """Run the trunk as deep as the deepest requested feature.

        Args:
            x: (B, 3, H, W) float images (RGB; Lab for ``alexnet_colorization``, from
                ``ImgPil2LabTensor``, whose L channel alone is used).
            out_feat_keys: names from :data:`FEATURE_NAMES` in the order wanted; None or empty
                means ``["flatten"]``.

        Returns:
            One tensor per requested name.

        Raises:
            ValueError: wrong input shape or unknown feature name.
        """
        return forward_feature_blocks(self._prepare_input(x), self._feature_blocks, FEATURE_NAMES,
                                      out_feat_keys, default="flatten", who=self.variant)


class _AlexNetVariant:
    """Registry entry for one variant: ``from_config`` builds :class:`AlexNet` of that variant."""

    def __init__(self, variant: str) -> None:
        self.variant = variant

    def from_config(self, trunk_cfg: Any) -> AlexNet:
        """Build the variant (the config's NAME is this entry's name)."""
        return AlexNet(variant=self.variant)

    def __call__(self, **kwargs: Any) -> AlexNet:
        return AlexNet(variant=self.variant, **kwargs)


for _variant in SPECS:
    TRUNKS.register(_variant)(_AlexNetVariant(_variant))
