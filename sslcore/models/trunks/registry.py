"""The trunk registry and the function that builds a trunk from ``MODEL.TRUNK``.

A trunk is the backbone whose features SSL methods learn (VISSL's "trunk"). Every registered trunk
is an ``nn.Module`` class with:

- ``forward(x, out_feat_keys=None) -> List[Tensor]``: the requested features, in order;
- ``feature_channels: Dict[str, int]``: the channels of every feature it can return, in depth order;
- ``from_config(trunk_cfg) -> trunk``: maps ``MODEL.TRUNK`` to the constructor's keyword arguments.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.registry import Registry

TRUNKS: Registry = Registry("trunk")

declare("MODEL.TRUNK", {
    "NAME": Key("resnet", str, "registry key of the trunk (VISSL's MODEL.TRUNK.NAME); "
                "'resnet' is VISSL's ResNet/ResNeXt"),
})


def build_trunk(trunk_cfg: Any) -> nn.Module:
    """Build the trunk named by ``MODEL.TRUNK.NAME`` from its config section.

    Args:
        trunk_cfg: the ``MODEL.TRUNK`` section (an OmegaConf DictConfig or anything with the
            same attribute access).

    Returns:
        The trunk module.

    Raises:
        ValueError: if ``MODEL.TRUNK.NAME`` is not a registered trunk (the message lists the
            closest names), or if the trunk rejects its own section.

    Example:
        >>> from sslcore.config import compose_config
        >>> cfg = compose_config(["config.MODEL.TRUNK.RESNETS.DEPTH=18"])
        >>> trunk = build_trunk(cfg.MODEL.TRUNK)
    """
    try:
        trunk_cls = TRUNKS.get(trunk_cfg.NAME)
    except KeyError as exc:
        raise ValueError(f"config.MODEL.TRUNK.NAME: {exc.args[0]}") from None
    return trunk_cls.from_config(trunk_cfg)
