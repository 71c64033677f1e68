"""BYOL: an online network (trunk, projector, predictor) predicts a momentum target's projection.

- [0] BYOL, Grill et al. 2020, https://arxiv.org/abs/2006.07733

The heads of ``MODEL.HEAD.PARAMS`` are chained (VISSL's layout): every head but the last is the
projector, the last head is the predictor. The target network is a momentum copy of the trunk and
the projector only (no predictor), built once from the model (:class:`MomentumEncoder`); after
each optimizer step it moves towards the online trunk and projector with BYOL's cosine schedule
tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, k the step and K the run's steps. Both views go
through both networks as one batch (simclr_collator, or default_collate with 2 views).

The target's weights are the method's checkpoint state, so a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from sslcore.engine.checkpoint import unwrap
from sslcore.methods.base import SSLMethod, register_method
from sslcore.methods.momentum import MomentumEncoder, cosine_momentum
from sslcore.methods.multicrop import count_crops
from sslcore.models.model import BaseSSLMultiInputOutputModel


def require_two_views(cfg: DictConfig, method: str) -> None:
    """Raise unless DATA.TRAIN.TRANSFORMS makes exactly 2 views per image.

    Raises:
        ValueError: naming ``method`` and the fix.
    """
    views = count_crops(list(cfg.DATA.TRAIN.TRANSFORMS))
    if views != 2:
        raise ValueError(f"{method} needs exactly 2 views per image: start DATA.TRAIN.TRANSFORMS "
                         f"with {{name: ImgReplicatePil, num_times: 2}}; found {views}")


def split_predictor(model: nn.Module, method: str) -> BaseSSLMultiInputOutputModel:
    """A view of ``model`` without its last head (trunk + projector), sharing its modules.

    Args:
        model: the (possibly DDP-wrapped) model with at least 2 chained heads.
        method: named in the error.

    Returns:
        A model whose forward runs the trunk and every head but the last.

    Raises:
        ValueError: if the model has fewer than 2 heads.
    """
    bare = unwrap(model)
    heads = list(getattr(bare, "heads", []))
    if len(heads) < 2:
        raise ValueError(f"{method} needs a projector and a predictor: list at least 2 heads in "
                         "MODEL.HEAD.PARAMS (the last one is the predictor), e.g. "
                         '[["mlp", {dims: [2048, 4096, 256], use_bn: true, use_relu: true}], '
                         '["mlp", {dims: [256, 4096, 256], use_bn: true, use_relu: true}]]; '
                         f"found {len(heads)}")
    return BaseSSLMultiInputOutputModel(trunk=bare.trunk, heads=heads[:-1],
                                        feature_pool_ops=dict(bare.feature_pool_ops))


@register_method
class BYOL(SSLMethod):
    """BYOL: online prediction of both views vs target projection of the other view.

    Args:
        cfg: the resolved config.
        model: the model being trained; its trunk and all heads but the last are copied once
            into the target network.
        loss: a :class:`sslcore.losses.byol.BYOLLoss`.

    Raises:
        ValueError: if the model has fewer than 2 heads.
    """

    loss_names = ("byol_loss",)

    def __init__(self, cfg: DictConfig, model: Any, loss: Any) -> None:
        super().__init__(cfg, model, loss)
        self.online_projection = split_predictor(model, "BYOL")
        self.target = MomentumEncoder(self.online_projection)
        self._target_output: Optional[torch.Tensor] = None

    @classmethod
    def infer_config(cls, cfg: DictConfig, *, world_size: int) -> Dict[str, Any]:
        """Nothing to derive; checks that there are 2 views.

        Raises:
            ValueError: not exactly 2 views.
        """
        require_two_views(cfg, "BYOL")
        return {}

    def forward(self, task: Any, batch: Dict[str, Any]) -> List[torch.Tensor]:
        """Target projections of both views (no gradient), then the online model's predictions."""
        self._target_output = self.target(batch["data"])[0]
        return self.model(batch["data"])

    def compute_loss(self, task: Any, outputs: List[torch.Tensor],
                     batch: Dict[str, Any]) -> torch.Tensor:
        """Symmetrised BYOL loss of predictions (2B, D) against target projections (2B, D)."""
        return self.loss(outputs[0], self._target_output)

    def momentum(self, task: Any) -> float:
        """tau at the current step: cosine from ``LOSS.byol_loss.momentum`` to 1 over the run."""
        return cosine_momentum(self.loss.momentum, task.iteration / task.max_iteration)

    def on_update(self, task: Any) -> None:
        """After the optimizer step: move the target towards the online trunk and projector."""
        self.target.update(self.online_projection, self.momentum(task))
        self._target_output = None

    def state_dict(self) -> Dict[str, Any]:
        """``{"loss": {}, "target": the target network's weights}``."""
        return {"loss": self.loss.state_dict(), "target": self.target.state_dict_for_checkpoint()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the target (without one in the checkpoint: a copy of the restored model)."""
        super().load_state_dict(state)
        if "target" in state:
            self.target.load_from_checkpoint(state["target"])
        else:
            self.target.update(self.online_projection, 0.0)
