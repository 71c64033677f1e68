"""SimSiam: two views, a shared encoder and projector, a predictor, and a stop-gradient.

- [0] SimSiam, Chen & He 2021, https://arxiv.org/abs/2011.10566

The heads of ``MODEL.HEAD.PARAMS`` are chained: every head but the last is the projector f's MLP,
the last is the predictor h. The model's output is the prediction p; the projection z is the
predictor's input, captured by a forward pre-hook on the last head during the method's own
forward pass only (so it is the very tensor p was computed from, through DDP) and detached by
the loss. No
momentum encoder, no negatives, no state beyond the weights.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from omegaconf import DictConfig
from torch import nn

from sslcore.engine.checkpoint import unwrap
from sslcore.methods.base import SSLMethod, register_method
from sslcore.methods.byol import require_two_views, split_predictor


@register_method
class SimSiam(SSLMethod):
    """SimSiam: D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2 on both views as one batch.

    Args:
        cfg: the resolved config.
        model: the model being trained (at least 2 heads; the last is the predictor).
        loss: a :class:`sslcore.losses.simsiam.SimSiamLoss`.

    Raises:
        ValueError: if the model has fewer than 2 heads.
    """

    loss_names = ("simsiam_loss",)

    def __init__(self, cfg: DictConfig, model: Any, loss: Any) -> None:
        super().__init__(cfg, model, loss)
        split_predictor(model, "SimSiam")  # checks there is a predictor head
        self._projections: List[torch.Tensor] = []
        self._capturing = False
        predictor = unwrap(model).heads[-1]
        self._hook = predictor.register_forward_pre_hook(self._capture_projection)

    def _capture_projection(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        if self._capturing:  # only inside this method's forward
            self._projections.append(args[0].detach().reshape(args[0].shape[0], -1))

    @classmethod
    def infer_config(cls, cfg: DictConfig, *, world_size: int) -> Dict[str, Any]:
        """Nothing to derive; checks that there are 2 views.

        Raises:
            ValueError: not exactly 2 views.
        """
        require_two_views(cfg, "SimSiam")
        return {}

    def forward(self, task: Any, batch: Dict[str, Any]) -> List[torch.Tensor]:
        """Predictions of both views; the projections are kept for the loss."""
        self._projections = []
        self._capturing = True
        try:
            return self.model(batch["data"])
        finally:
            self._capturing = False

    def compute_loss(self, task: Any, outputs: List[torch.Tensor],
                     batch: Dict[str, Any]) -> torch.Tensor:
        """SimSiam loss of predictions (2B, D) against the captured projections (2B, D).

        Raises:
            RuntimeError: if the forward pass did not run the predictor head.
        """
        if not self._projections:
            raise RuntimeError("SimSiam: the predictor head did not run in the forward pass")
        projections = torch.cat(self._projections)
        self._projections = []
        return self.loss(outputs[0], projections)
