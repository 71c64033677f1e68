"""ResNet and ResNeXt trunks with VISSL's module layout and feature names (registry key ``"resnet"``).

Papers:
    - [0] ResNet, He et al. 2015, https://arxiv.org/abs/1512.03385
    - [1] ResNeXt, Xie et al. 2016, https://arxiv.org/abs/1611.05431
    - [2] Group Normalization, Wu and He 2018, https://arxiv.org/abs/1803.08494
    - [3] SimCLR, Chen et al. 2020, https://arxiv.org/abs/2002.05709 (ResNet-50 at widths 1x, 2x,
      4x: the width multiplier)

The blocks are torchvision's ``BasicBlock`` and ``Bottleneck``; the stages sit in
``self._feature_blocks`` under torchvision's names, so a checkpoint's trunk keys read
``_feature_blocks.layer1.0.conv1.weight`` and convert to torchvision by dropping the prefix.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from sslcore.config.schema import Key, declare
from sslcore.models.trunks.registry import TRUNKS

declare("MODEL.TRUNK.RESNETS", {
    "DEPTH": Key(50, int, "number of layers; 18 and 34 use basic blocks, 50 and 101 bottlenecks",
                 choices=(18, 34, 50, 101)),
    "WIDTH_MULTIPLIER": Key(1.0, float, "channel multiplier of every stage; VISSL uses 1, 2, 4; "
                            "fractions such as 0.25 give thin trunks for CPU runs"),
    "NORM": Key("BatchNorm", str, "normalisation layer. GroupNorm and LayerNorm normalise each "
                "sample alone, so outputs do not depend on how a batch is split over processes",
                choices=("BatchNorm", "GroupNorm", "LayerNorm")),
    "GROUPNORM_GROUPS": Key(32, int, "groups of GroupNorm; for channel counts it does not divide "
                            "(thin trunks) the greatest common divisor is used"),
    "GROUPS": Key(1, int, "ResNeXt cardinality: groups of each bottleneck's 3x3 conv (1 = ResNet)"),
    "WIDTH_PER_GROUP": Key(64, int, "ResNeXt channels per group at width multiplier 1 (64 = ResNet)"),
    "ZERO_INIT_RESIDUAL": Key(False, bool, "initialise the last norm of each block to zero so "
                              "every block starts as the identity"),
    "STEM": Key("standard", str, "not a VISSL key. 'standard': 7x7 stride-2 conv + 3x3 stride-2 "
                "max-pool (ImageNet); 'small': 3x3 stride-1 conv and no max-pool (CIFAR-style, "
                "for 28-32 px inputs)", choices=("standard", "small")),
})

_BlockType = Type[Union[BasicBlock, Bottleneck]]
_DEPTHS: Dict[int, Tuple[_BlockType, Tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}
_STEMS = ("standard", "small")

# VISSL's feature names (feat_eval_mapping) -> the block of _feature_blocks that produces them
FEATURE_TO_BLOCK: Dict[str, str] = {
    "conv1": "conv1_relu",
    "res1": "maxpool",
    "res2": "layer1",
    "res3": "layer2",
    "res4": "layer3",
    "res5": "layer4",
    "res5avg": "avgpool",
    "flatten": "flatten",
}


def make_norm_layer(norm: str, groupnorm_groups: int = 32) -> Callable[[int], nn.Module]:
    """Return a factory ``channels -> norm module`` for ``MODEL.TRUNK.RESNETS.NORM``.

    Args:
        norm: ``"BatchNorm"`` (BatchNorm2d), ``"GroupNorm"`` (``groupnorm_groups`` groups, reduced to
            the greatest common divisor with the channel count when it does not divide it) or
            ``"LayerNorm"`` (GroupNorm with one group: statistics over C, H, W of each sample).
        groupnorm_groups: number of GroupNorm groups, >= 1.

    Returns:
        A callable taking the channel count C and returning a module on (B, C, H, W) tensors.

    Raises:
        ValueError: if ``norm`` is unknown or ``groupnorm_groups`` < 1.
    """
    if norm == "BatchNorm":
        return nn.BatchNorm2d
    if norm == "LayerNorm":
        return lambda channels: nn.GroupNorm(1, channels)
    if norm == "GroupNorm":
        if groupnorm_groups < 1:
            raise ValueError(f"MODEL.TRUNK.RESNETS.GROUPNORM_GROUPS must be >= 1, got {groupnorm_groups}")
        return lambda channels: nn.GroupNorm(math.gcd(groupnorm_groups, channels), channels)
    raise ValueError(
        f"MODEL.TRUNK.RESNETS.NORM: unknown norm {norm!r}; use one of BatchNorm, GroupNorm, LayerNorm"
    )


def make_stage(block: _BlockType, in_channels: int, planes: int, num_blocks: int, *, stride: int,
               groups: int, width_per_group: int, norm_layer: Callable[[int], nn.Module]) -> nn.Sequential:
    """Build one ResNet stage (torchvision's layer layout and parameter names).

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        in_channels: channels entering the stage.
        planes: the stage's base width; it outputs ``planes * block.expansion`` channels.
        num_blocks: blocks in the stage, >= 1.
        stride: stride of the first block (1 or 2).
        groups: ResNeXt cardinality.
        width_per_group: ResNeXt width per group (torchvision's ``base_width``).
        norm_layer: factory from :func:`make_norm_layer`.

    Returns:
        ``nn.Sequential`` of blocks mapping (B, in_channels, H, W) to
        (B, planes * expansion, H / stride, W / stride).
    """
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            norm_layer(out_channels),
        )
    blocks = [block(in_channels, planes, stride, downsample, groups, width_per_group, 1, norm_layer)]
    for _ in range(1, num_blocks):
        blocks.append(block(out_channels, planes, groups=groups, base_width=width_per_group,
                            norm_layer=norm_layer))
    return nn.Sequential(*blocks)


def _halve(size: int) -> int:
    """Output size of a stride-2 layer with 'same' padding (3x3/p1, 7x7/p3, 1x1/p0)."""
    return (size - 1) // 2 + 1


@TRUNKS.register("resnet")
class ResNeXt(nn.Module):
    """ResNet / ResNeXt trunk returning VISSL's named features.

    Papers: [0] ResNet (https://arxiv.org/abs/1512.03385), [1] ResNeXt
    (https://arxiv.org/abs/1611.05431), [2] GroupNorm (https://arxiv.org/abs/1803.08494).

    Features (VISSL names) for a (B, 3, H, W) input, with E = 1 for depth 18/34 and 4 for 50/101,
    c = round(64 * width_multiplier), and r = 2 for the standard stem, 1 for the small one
    (spatial sizes round up; :meth:`feature_shapes` gives exact ones):

    ========= =========== ==================================
    name      block       shape
    ========= =========== ==================================
    conv1     conv1_relu  (B, c, H/r, W/r)
    res1      maxpool     (B, c, H/r^2, W/r^2)
    res2      layer1      (B, c*E, H/r^2, W/r^2)
    res3      layer2      (B, 2c*E, H/(2r^2), W/(2r^2))
    res4      layer3      (B, 4c*E, H/(4r^2), W/(4r^2))
    res5      layer4      (B, 8c*E, H/(8r^2), W/(8r^2))
    res5avg   avgpool     (B, 8c*E, 1, 1)
    flatten   flatten     (B, D), D = 8c*E
    ========= =========== ==================================

    Args:
        depth: 18, 34 (basic blocks), 50 or 101 (bottlenecks).
        width_multiplier: multiplies every stage's width (> 0); 1/2/4 as in VISSL, fractions for
            thin CPU trunks.
        norm: ``"BatchNorm"``, ``"GroupNorm"`` or ``"LayerNorm"`` (see :func:`make_norm_layer`).
        groupnorm_groups: GroupNorm groups.
        groups: ResNeXt cardinality (1 = ResNet); must be 1 for depth 18/34.
        width_per_group: ResNeXt width per group (64 = ResNet); must be 64 for depth 18/34.
        zero_init_residual: zero the last norm's weight in each block.
        stem: ``"standard"`` (7x7/2 conv + max-pool) or ``"small"`` (3x3/1 conv, no max-pool;
            not a VISSL option, for 28-32 px inputs).
        in_channels: image channels (3 for RGB).

    Raises:
        ValueError: for an unsupported depth, stem, norm, a non-positive width, or ResNeXt
            settings on a basic-block depth; the message names the config key to change.

    Example:
        >>> trunk = ResNeXt(depth=18, width_multiplier=0.25, stem="small")
        >>> res5, flat = trunk(torch.randn(2, 3, 32, 32), out_feat_keys=["res5", "flatten"])
        >>> res5.shape, flat.shape
        (torch.Size([2, 128, 4, 4]), torch.Size([2, 128]))
    """

    def __init__(self, *, depth: int = 50, width_multiplier: float = 1.0, norm: str = "BatchNorm",
                 groupnorm_groups: int = 32, groups: int = 1, width_per_group: int = 64,
                 zero_init_residual: bool = False, stem: str = "standard", in_channels: int = 3) -> None:
        super().__init__()
        block, stage_blocks = self._check_args(depth, width_multiplier, groups, width_per_group, stem)
        norm_layer = make_norm_layer(norm, groupnorm_groups)
        base = int(round(64 * width_multiplier))
        self.stem = stem
        self.depth = depth
        self.in_channels = in_channels

        if stem == "standard":
            conv1 = nn.Conv2d(in_channels, base, kernel_size=7, stride=2, padding=3, bias=False)
            maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            conv1 = nn.Conv2d(in_channels, base, kernel_size=3, stride=1, padding=1, bias=False)
            maxpool = nn.Identity()
        blocks: Dict[str, nn.Module] = {"conv1": conv1, "bn1": norm_layer(base),
                                        "conv1_relu": nn.ReLU(inplace=True), "maxpool": maxpool}
        channels = {"conv1": base, "res1": base}
        stage_in = base
        for index, num_blocks in enumerate(stage_blocks):
            planes = base * 2 ** index
            blocks[f"layer{index + 1}"] = make_stage(
                block, stage_in, planes, num_blocks, stride=1 if index == 0 else 2, groups=groups,
                width_per_group=width_per_group, norm_layer=norm_layer)
            stage_in = planes * block.expansion
            channels[f"res{index + 2}"] = stage_in
        blocks["avgpool"] = nn.AdaptiveAvgPool2d((1, 1))
        blocks["flatten"] = nn.Flatten(1)
        channels["res5avg"] = channels["flatten"] = stage_in
        self._feature_blocks = nn.ModuleDict(blocks)
        self._block_order = {name: i for i, name in enumerate(self._feature_blocks)}
        self.feature_channels: Dict[str, int] = {name: channels[name] for name in FEATURE_TO_BLOCK}
        self._init_weights(zero_init_residual)

    @staticmethod
    def _check_args(depth: int, width_multiplier: float, groups: int, width_per_group: int,
                    stem: str) -> Tuple[_BlockType, Tuple[int, int, int, int]]:
        if depth not in _DEPTHS:
            raise ValueError(f"MODEL.TRUNK.RESNETS.DEPTH={depth} is not supported; use one of "
                             f"{sorted(_DEPTHS)}")
        if stem not in _STEMS:
            raise ValueError(f"MODEL.TRUNK.RESNETS.STEM={stem!r}: use 'standard' or 'small'")
        if not width_multiplier > 0 or int(round(64 * width_multiplier)) < 1:
            raise ValueError(f"MODEL.TRUNK.RESNETS.WIDTH_MULTIPLIER={width_multiplier} must be "
                             ">= 1/64 so that the stem has at least one channel")
        if groups < 1 or width_per_group < 1:
            raise ValueError("MODEL.TRUNK.RESNETS.GROUPS and WIDTH_PER_GROUP must be >= 1, got "
                             f"{groups} and {width_per_group}")
        block, stage_blocks = _DEPTHS[depth]
        if block is BasicBlock and (groups != 1 or width_per_group != 64):
            raise ValueError(
                f"ResNeXt settings need bottleneck blocks: with MODEL.TRUNK.RESNETS.DEPTH={depth} "
                "set GROUPS=1 and WIDTH_PER_GROUP=64, or use DEPTH 50 or 101")
        return block, stage_blocks

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    @classmethod
    def from_config(cls, trunk_cfg: Any) -> "ResNeXt":
        """Build from the ``MODEL.TRUNK`` section (reads ``MODEL.TRUNK.RESNETS``).

        Raises:
            ValueError: as the constructor.
        """
        r = trunk_cfg.RESNETS
        return cls(depth=int(r.DEPTH), width_multiplier=float(r.WIDTH_MULTIPLIER), norm=str(r.NORM),
                   groupnorm_groups=int(r.GROUPNORM_GROUPS), groups=int(r.GROUPS),
                   width_per_group=int(r.WIDTH_PER_GROUP),
                   zero_init_residual=bool(r.ZERO_INIT_RESIDUAL), stem=str(r.STEM))

    @property
    def feature_names(self) -> List[str]:
        """Every feature name ``forward`` accepts, shallowest first."""
        return list(FEATURE_TO_BLOCK)

    def feature_shapes(self, input_size: Union[int, Tuple[int, int]]) -> Dict[str, Tuple[int, ...]]:
        """Per-sample output shape of every feature for a given input size, without running it.

        Args:
            input_size: H (square input) or (H, W) in pixels.

        Returns:
            ``{name: (C, H', W')}`` for spatial features and ``{"flatten": (D,)}``.
        """
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        shapes: Dict[str, Tuple[int, ...]] = {}
        if self.stem == "standard":
            h, w = _halve(h), _halve(w)
        shapes["conv1"] = (self.feature_channels["conv1"], h, w)
        if self.stem == "standard":
            h, w = _halve(h), _halve(w)
        shapes["res1"] = (self.feature_channels["res1"], h, w)
        for stage in range(2, 6):
            if stage > 2:
                h, w = _halve(h), _halve(w)
            shapes[f"res{stage}"] = (self.feature_channels[f"res{stage}"], h, w)
        shapes["res5avg"] = (self.feature_channels["res5avg"], 1, 1)
        shapes["flatten"] = (self.feature_channels["flatten"],)
        return shapes

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        """Run the trunk as deep as the deepest requested feature.

        Args:
            x: images, (B, in_channels, H, W) float.
            out_feat_keys: feature names (see the class docstring), in the order wanted; None or
                empty means ``["flatten"]``. A name may repeat.

        Returns:
            One tensor per requested name, in the requested order.

        Raises:
            ValueError: if ``x`` is not (B, in_channels, H, W) or a name is unknown (the message
                lists the valid names).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ResNeXt expects images of shape (B, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        names = list(out_feat_keys) if out_feat_keys else ["flatten"]
        unknown = [n for n in names if n not in FEATURE_TO_BLOCK]
        if unknown:
            raise ValueError(f"unknown trunk feature(s) {unknown}; valid feature names are "
                             f"{list(FEATURE_TO_BLOCK)}")
        wanted = {FEATURE_TO_BLOCK[n] for n in names}
        deepest = max(self._block_order[b] for b in wanted)
        found: Dict[str, torch.Tensor] = {}
        for index, (block_name, block) in enumerate(self._feature_blocks.items()):
            x = block(x)
            if block_name in wanted:
                found[block_name] = x
            if index == deepest:
                break
        return [found[FEATURE_TO_BLOCK[n]] for n in names]
