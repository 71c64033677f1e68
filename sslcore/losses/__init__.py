"""Losses, one module per SSL loss family. Importing this package fills :data:`LOSSES`."""

from sslcore.losses.registry import LOSSES, build_loss
from sslcore.losses import simclr_info_nce  # noqa: F401,E402  (registers "simclr_info_nce_loss")
from sslcore.losses import barlow_twins, vicreg  # noqa: F401,E402  (barlow_twins_loss, vicreg_loss)
from sslcore.losses import multicrop_simclr, swav, deepclusterv2  # noqa: F401,E402  (multicrop_simclr_info_nce_loss, swav_loss, swav_momentum_loss, deepclusterv2_loss)
from sslcore.losses import nce_with_memory  # noqa: F401,E402  (registers "nce_loss_with_memory")
from sslcore.losses import moco, byol, simsiam, dino  # noqa: F401,E402  (moco_loss, byol_loss, simsiam_loss, dino_loss)
from sslcore.losses import cross_entropy  # noqa: F401,E402  (CrossEntropyLoss, cross_entropy_multiple_output_single_target)

__all__ = ["LOSSES", "build_loss"]
