"""Losses, one module per SSL loss family. Importing this package fills :data:`LOSSES`."""

from sslcore.losses.registry import LOSSES, build_loss
from sslcore.losses import simclr_info_nce  # noqa: F401,E402  (registers "simclr_info_nce_loss")

__all__ = ["LOSSES", "build_loss"]
