"""The loss registry and the function that builds the loss named by ``LOSS.name``.

Every registered loss is an ``nn.Module`` class with typed keyword arguments and a
``from_config(section)`` classmethod that reads its own section ``LOSS.<name>`` (VISSL layout:
``LOSS.name: simclr_info_nce_loss`` and ``LOSS.simclr_info_nce_loss.temperature: 0.1``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.registry import Registry

LOSSES: Registry = Registry("loss")

declare("LOSS", {
    "name": Key("simclr_info_nce_loss", str, "registry key of the loss; its settings are "
                "under LOSS.<name>"),
})


def build_loss(loss_cfg: Any) -> nn.Module:
    """Build the loss named by ``LOSS.name`` from its section ``LOSS[LOSS.name]``.

    Args:
        loss_cfg: the ``LOSS`` section of a composed config (OmegaConf DictConfig).

    Returns:
        The loss module.

    Raises:
        ValueError: if ``LOSS.name`` is not a registered loss (the message lists the closest
            names), its section is missing, or the loss rejects its settings.

    Example:
        >>> from sslcore.config import compose_config
        >>> loss = build_loss(compose_config(["config.LOSS.simclr_info_nce_loss.temperature=0.2"]).LOSS)
    """
    name = loss_cfg.name
    try:
        loss_cls = LOSSES.get(name)
    except KeyError as exc:
        raise ValueError(f"config.LOSS.name: {exc.args[0]}") from None
    section = loss_cfg.get(name)
    if section is None:
        raise ValueError(f"config.LOSS.name={name!r} but config.LOSS.{name} is missing; "
                         f"add the section (see the loss's docstring for its keys)")
    return loss_cls.from_config(section)
