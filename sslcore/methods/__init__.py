"""Training methods, registered under the VISSL loss names they implement.

Explicit imports fill the registry (house style); add a line here for every new method module.
"""

from sslcore.methods.base import METHODS, SSLMethod, register_method
from sslcore.methods import simclr  # noqa: F401  (registers simclr_info_nce_loss)
from sslcore.methods import barlow_twins, vicreg  # noqa: F401  (barlow_twins_loss, vicreg_loss)
from sslcore.methods import simclr_multicrop, swav, swav_momentum, deepclusterv2  # noqa: F401  (multicrop_simclr_info_nce_loss, swav_loss, swav_momentum_loss, deepclusterv2_loss)
from sslcore.methods import npid  # noqa: F401  (nce_loss_with_memory: NPID, NPID++, PIRL)
from sslcore.methods import moco, byol, simsiam, dino  # noqa: F401  (moco_loss, byol_loss, simsiam_loss, dino_loss)
from sslcore.methods import supervised  # noqa: F401  (CrossEntropyLoss, cross_entropy_multiple_output_single_target)


def get_method_class(loss_name: str) -> type:
    """The method class for ``LOSS.name`` (KeyError with close names when unknown)."""
    return METHODS.get(loss_name)


__all__ = ["METHODS", "SSLMethod", "get_method_class", "register_method"]
