"""RegNet trunks (registry key ``"regnet"``) built from torchvision's RegNet, VISSL feature names.

``MODEL.TRUNK.REGNET`` takes VISSL's (ClassyVision's) forms:

- a preset: ``{name: regnet_y_16gf}`` (also ``regnet_y_1.6gf`` / ``regnet_y_1_6gf`` spellings);
- the RegNet design-space parameters: ``{depth, w_0, w_a, w_m, group_width}`` plus optional
  ``bottleneck_multiplier, stem_width, use_se, se_ratio, activation, bn_epsilon, bn_momentum``;
- explicit stages (VISSL's SEER configs): ``{name: anynet, depths, widths, group_widths,
  bottleneck_multipliers, strides}`` plus the same optional keys.

Only torchvision's blocks exist: ``stem_type: simple_stem_in`` and ``block_type:
res_bottleneck_block`` (RegNetX/Y); other values raise. No weights are ever downloaded.

Features follow VISSL's RegNet trunk: ``conv1`` (stem), ``res2 .. res<n+1>`` (one per stage, 4
for every preset), ``avgpool`` (B, C, 1, 1) and ``flatten`` (B, C).

Papers:
    - [0] Designing Network Design Spaces (RegNet), Radosavovic et al. 2020,
      https://arxiv.org/abs/2003.13678
    - [1] SEER, Goyal et al. 2021, https://arxiv.org/abs/2103.01988 (RegNetY-256GF pretraining)
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchvision.models.regnet import BlockParams, RegNet as TorchvisionRegNet

from sslcore.config.schema import Key, declare
from sslcore.models.trunks.feature_blocks import forward_feature_blocks
from sslcore.models.trunks.registry import TRUNKS

declare("MODEL.TRUNK", {
    "REGNET": Key({}, dict, "RegNet trunk (NAME: regnet): {name: regnet_y_16gf} (a preset), or "
                  "{depth, w_0, w_a, w_m, group_width, ...}, or {name: anynet, depths, widths, "
                  "group_widths, bottleneck_multipliers, strides}; see sslcore.models.trunks.regnet"),
})

# (depth, w_0, w_a, w_m, group_width, use_se): the published design-space values (ClassyVision's
# and torchvision's presets, identical)
PRESETS: Dict[str, Tuple[int, int, float, float, int, bool]] = {
    "regnet_y_400mf": (16, 48, 27.89, 2.09, 8, True),
    "regnet_y_800mf": (14, 56, 38.84, 2.4, 16, True),
    "regnet_y_1.6gf": (27, 48, 20.71, 2.65, 24, True),
    "regnet_y_3.2gf": (21, 80, 42.63, 2.66, 24, True),
    "regnet_y_8gf": (17, 192, 76.82, 2.19, 56, True),
    "regnet_y_16gf": (18, 200, 106.23, 2.48, 112, True),
    "regnet_y_32gf": (20, 232, 115.89, 2.53, 232, True),
    "regnet_y_64gf": (20, 368, 102.79, 2.05, 496, True),
    "regnet_y_128gf": (27, 456, 160.83, 2.52, 264, True),
    "regnet_y_256gf": (27, 640, 124.47, 2.04, 848, True),
    "regnet_x_400mf": (22, 24, 24.48, 2.54, 16, False),
    "regnet_x_800mf": (16, 56, 35.73, 2.28, 16, False),
    "regnet_x_1.6gf": (18, 80, 34.01, 2.25, 24, False),
    "regnet_x_3.2gf": (25, 88, 26.31, 2.25, 48, False),
    "regnet_x_8gf": (23, 80, 49.56, 2.88, 120, False),
    "regnet_x_16gf": (22, 216, 55.59, 2.1, 128, False),
    "regnet_x_32gf": (23, 320, 69.86, 2.0, 168, False),
}
_DESIGN_KEYS = ("depth", "w_0", "w_a", "w_m", "group_width")
_ANYNET_KEYS = ("depths", "widths", "group_widths", "bottleneck_multipliers", "strides")
_COMMON_KEYS = ("bottleneck_multiplier", "stem_type", "stem_width", "block_type", "activation",
                "use_se", "se_ratio", "bn_epsilon", "bn_momentum")
_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}


def _preset_name(name: str) -> str:
    """Accept VISSL's ``regnet_y_1.6gf`` and torchvision's ``regnet_y_1_6gf`` spellings."""
    for preset in PRESETS:
        if name in (preset, preset.replace(".", "_")):
            return preset
    raise ValueError(f"config.MODEL.TRUNK.REGNET.name={name!r} is not a RegNet preset; use "
                     f"'anynet', one of {sorted(PRESETS)}, or give depth/w_0/w_a/w_m/group_width")


def block_params_from_config(params: Mapping[str, Any]) -> Tuple[BlockParams, Dict[str, Any]]:
    """Turn a ``MODEL.TRUNK.REGNET`` mapping into torchvision block parameters.

    Args:
        params: see the module docstring.

    Returns:
        ``(block_params, common)``: per-stage widths, depths, groups, strides and SE ratio; and
        the resolved common settings (stem_width, activation, bn_epsilon, bn_momentum).

    Raises:
        ValueError: unknown or missing keys, unsupported stem/block types or activations.
    """
    params = dict(params)
    name = params.pop("name", None)
    if name is None and not params:
        raise ValueError("config.MODEL.TRUNK.REGNET is empty: set {name: regnet_y_16gf} or the "
                         "design parameters depth, w_0, w_a, w_m, group_width")
    mode_keys = _ANYNET_KEYS if name == "anynet" else _DESIGN_KEYS
    unknown = sorted(set(params) - set(mode_keys) - set(_COMMON_KEYS))
    if unknown:
        raise ValueError(f"config.MODEL.TRUNK.REGNET: unknown key(s) {unknown}; valid: "
                         f"name, {', '.join(mode_keys + _COMMON_KEYS)}")
    if name not in (None, "anynet"):
        preset = _preset_name(str(name))
        values = PRESETS[preset][:5]
        params = {**dict(zip(_DESIGN_KEYS, values)), "use_se": PRESETS[preset][5], **params}
    missing = [k for k in mode_keys if k not in params]
    if missing:
        raise ValueError(f"config.MODEL.TRUNK.REGNET: missing {missing} (name={name!r})")
    if str(params.get("stem_type", "simple_stem_in")).lower() != "simple_stem_in":
        raise ValueError("config.MODEL.TRUNK.REGNET.stem_type: only 'simple_stem_in' is available")
    if str(params.get("block_type", "res_bottleneck_block")).lower() != "res_bottleneck_block":
        raise ValueError("config.MODEL.TRUNK.REGNET.block_type: only 'res_bottleneck_block' is "
                         "available (RegNetX/Y)")
    activation = str(params.get("activation", "relu")).lower()
    if activation not in _ACTIVATIONS:
        raise ValueError(f"config.MODEL.TRUNK.REGNET.activation={activation!r}; use relu or silu")
    se_ratio = float(params.get("se_ratio", 0.25)) if params.get("use_se", True) else None
    if name == "anynet":
        lists = [list(params[k]) for k in _ANYNET_KEYS]
        if len({len(v) for v in lists}) != 1:
            raise ValueError("config.MODEL.TRUNK.REGNET: depths, widths, group_widths, "
                             "bottleneck_multipliers and strides need one entry per stage")
        depths, widths, groups, mults, strides = lists
        block_params = BlockParams(depths=[int(d) for d in depths], widths=[int(w) for w in widths],
                                   group_widths=[int(g) for g in groups],
                                   bottleneck_multipliers=[float(m) for m in mults],
                                   strides=[int(s) for s in strides], se_ratio=se_ratio)
    else:
        block_params = BlockParams.from_init_params(
            depth=int(params["depth"]), w_0=int(params["w_0"]), w_a=float(params["w_a"]),
            w_m=float(params["w_m"]), group_width=int(params["group_width"]),
            bottleneck_multiplier=float(params.get("bottleneck_multiplier", 1.0)),
            se_ratio=se_ratio)
    common = {"stem_width": int(params.get("stem_width", 32)), "activation": activation,
              "bn_epsilon": float(params.get("bn_epsilon", 1e-5)),
              "bn_momentum": float(params.get("bn_momentum", 0.1))}
    return block_params, common


def _output_channels(stage: nn.Module) -> int:
    """Output width of a stage: its last BatchNorm (each block ends with conv + BatchNorm)."""
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    return int(norms[-1].num_features)


@TRUNKS.register("regnet")
class RegNetTrunk(nn.Module):
    """RegNet trunk returning VISSL's named features.

    Papers: [0] https://arxiv.org/abs/2003.13678, [1] https://arxiv.org/abs/2103.01988

    For a (B, 3, H, W) input, with stage widths w_1..w_n (n = 4 for every preset): ``conv1``
    (B, stem_width, H/2, W/2); ``res<k+1>`` (B, w_k, H/2^(k+1), W/2^(k+1)) for stage k; ``avgpool``
    (B, w_n, 1, 1); ``flatten`` (B, w_n). Spatial sizes round up.

    Args:
        regnet: the ``MODEL.TRUNK.REGNET`` mapping (see the module docstring).

    Raises:
        ValueError: for invalid settings; the message names the key.

    Example:
        >>> trunk = RegNetTrunk(regnet={"name": "regnet_y_400mf"})
        >>> res5, flat = trunk(torch.randn(2, 3, 64, 64), out_feat_keys=["res5", "flatten"])
        >>> res5.shape, flat.shape
        (torch.Size([2, 440, 2, 2]), torch.Size([2, 440]))
    """

    def __init__(self, *, regnet: Mapping[str, Any]) -> None:
        super().__init__()
        block_params, common = block_params_from_config(regnet)
        norm = functools.partial(nn.BatchNorm2d, eps=common["bn_epsilon"],
                                 momentum=common["bn_momentum"])
        net = TorchvisionRegNet(block_params, stem_width=common["stem_width"], norm_layer=norm,
                                activation=_ACTIVATIONS[common["activation"]])
        blocks: Dict[str, nn.Module] = {"conv1": net.stem}
        channels = {"conv1": common["stem_width"]}
        for index, stage in enumerate(net.trunk_output.children()):
            blocks[f"res{index + 2}"] = stage
            channels[f"res{index + 2}"] = _output_channels(stage)
        last = channels[list(blocks)[-1]]
        blocks["avgpool"] = nn.AdaptiveAvgPool2d((1, 1))
        blocks["flatten"] = nn.Flatten(1)
        channels["avgpool"] = channels["flatten"] = last
        self._feature_blocks = nn.ModuleDict(blocks)
        self.feature_channels: Dict[str, int] = channels

    @classmethod
    def from_config(cls, trunk_cfg: Any) -> "RegNetTrunk":
        """Build from the ``MODEL.TRUNK`` section (reads ``MODEL.TRUNK.REGNET``).

        Raises:
            ValueError: as the constructor.
        """
        regnet = trunk_cfg.REGNET
        if isinstance(regnet, DictConfig):
            regnet = OmegaConf.to_container(regnet, resolve=True)
        return cls(regnet=regnet or {})

    @property
    def feature_names(self) -> List[str]:
        """Every feature name ``forward`` accepts, shallowest first."""
        return list(self._feature_blocks)

    @property
    def default_eval_feature(self) -> str:
        """The feature evaluated when LINEAR_EVAL_FEAT_POOL_OPS_MAP names none (``avgpool``)."""
        return "avgpool"

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        """Run the trunk as deep as the deepest requested feature.

        Args:
            x: (B, 3, H, W) float images.
            out_feat_keys: feature names in the order wanted; None or empty means ``["flatten"]``.

        Returns:
            One tensor per requested name.

        Raises:
            ValueError: wrong input shape or unknown feature name.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"RegNet expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
        return forward_feature_blocks(x, list(self._feature_blocks.values()), self.feature_names,
                                      out_feat_keys, default="flatten", who="regnet")
