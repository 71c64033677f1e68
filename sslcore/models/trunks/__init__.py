"""Trunks (backbones). Importing this package fills :data:`TRUNKS` with every trunk listed here."""

from sslcore.models.trunks.registry import TRUNKS, build_trunk
from sslcore.models.trunks import resnet  # noqa: F401,E402  (registers "resnet")

__all__ = ["TRUNKS", "build_trunk"]
