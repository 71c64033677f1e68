"""The method object: what makes SimCLR SimCLR, MoCo MoCo, SwAV SwAV.

A method owns the loss and any method-specific state (momentum encoder, key queue, memory bank,
prototypes) and its updates, through the hook points of :mod:`sslcore.engine.hooks`. The engine
never asks which loss is configured: it calls the method's ``forward``/``compute_loss`` and hooks.
Methods are registered under the VISSL loss names they implement (``LOSS.name`` selects one).
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Tuple

import torch
from omegaconf import DictConfig
from torch import nn

from sslcore.engine.hooks import Hook
from sslcore.registry import Registry

METHODS: Registry[type] = Registry("method (LOSS.name)")


def register_method(cls: type) -> type:
    """Class decorator: register ``cls`` under every name in ``cls.loss_names``.

    Raises:
        ValueError: if one of the names is already taken.
    """
    for name in cls.loss_names:
        METHODS.register(name)(cls)
    return cls


class SSLMethod(Hook):
    """Base method: forward the first input through the model, apply the configured loss.

    Subclasses set ``loss_names`` and override what differs. State that must survive a restart
    goes through :meth:`state_dict`/:meth:`load_state_dict` (saved as the checkpoint's ``loss``).

    Args:
        cfg: the resolved config.
        model: the (possibly DDP-wrapped) model being trained.
        loss: the loss module built from ``LOSS``.
    """

    loss_names: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, cfg: DictConfig, model: nn.Module, loss: nn.Module) -> None:
        self.cfg = cfg
        self.model = model
        self.loss = loss

    @classmethod
    def infer_config(cls, cfg: DictConfig, *, world_size: int) -> Dict[str, Any]:
        """Values this method derives from the rest of the config (pure).

        Returns:
            ``{dotted_key: value}`` to set; the engine logs and applies them.
        """
        return {}

    def forward(self, task: Any, batch: Dict[str, Any]) -> List[torch.Tensor]:
        """Run the model on the batch. Returns the model's list of outputs."""
        return self.model(batch["data"][0])

    def compute_loss(self, task: Any, outputs: List[torch.Tensor],
                     batch: Dict[str, Any]) -> torch.Tensor:
        """Scalar loss from the model outputs (the first head chain's output by default)."""
        return self.loss(outputs[0])

    def state_dict(self) -> Dict[str, Any]:
        """Method state to checkpoint (queues, memory banks, momentum encoders)."""
        return {"loss": self.loss.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if "loss" in state:
            self.loss.load_state_dict(state["loss"])
