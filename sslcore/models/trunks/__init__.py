"""Trunks (backbones). Importing this package fills :data:`TRUNKS` with every trunk listed here."""

from sslcore.models.trunks.registry import TRUNKS, build_trunk
from sslcore.models.trunks import resnet  # noqa: F401,E402  (registers "resnet")
from sslcore.models.trunks import regnet, vision_transformer  # noqa: F401,E402  ("regnet", "vision_transformer")
from sslcore.models.trunks import alexnet  # noqa: F401,E402  (registers "alexnet_bvlc", ... "alexnet_colorization")

__all__ = ["TRUNKS", "build_trunk"]
