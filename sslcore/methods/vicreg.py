"""VICReg: two views, one encoder + expander, variance-invariance-covariance regularisation;
no negatives, no momentum encoder, no state beyond the weights.

- [0] VICReg, Bardes et al. 2021, https://arxiv.org/abs/2105.04906

VISSL has no VICReg; the method runs exactly as :class:`sslcore.methods.barlow_twins.BarlowTwins`
(both views as one batch, (2B, D) view-major) with :class:`sslcore.losses.vicreg.VICRegLoss`,
registered as ``vicreg_loss``. BatchNorm in the expander: see the Barlow Twins module.
"""

from __future__ import annotations

from sslcore.methods.barlow_twins import BarlowTwins
from sslcore.methods.base import register_method


@register_method
class VICReg(BarlowTwins):
    """VICReg: the loss of the expander outputs of both views, (2B, D) view-major.

    Args:
        cfg: the resolved config (2 views per image).
        model: the model being trained; its (chained) heads are the expander.
        loss: the loss named by ``LOSS.name``.

    Raises:
        ValueError: if the data does not make exactly 2 views per image.
    """

    loss_names = ("vicreg_loss",)
    display_name = "VICReg"
