"""Training methods, registered under the VISSL loss names they implement.

Explicit imports fill the registry (house style); add a line here for every new method module.
"""

from sslcore.methods.base import METHODS, SSLMethod, register_method
from sslcore.methods import simclr  # noqa: F401  (registers simclr_info_nce_loss)


def get_method_class(loss_name: str) -> type:
    """The method class for ``LOSS.name`` (KeyError with close names when unknown)."""
    return METHODS.get(loss_name)


__all__ = ["METHODS", "SSLMethod", "get_method_class", "register_method"]
