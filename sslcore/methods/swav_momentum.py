"""SwAV with a momentum teacher: the codes come from an EMA copy of the model.

- [0] SwAV, Caron et al. 2020, https://arxiv.org/abs/2006.09882 (swapped prediction, Sinkhorn)
- [1] MoCo, He et al. 2020, https://arxiv.org/abs/1911.05722 (momentum encoder)

Per step: the teacher (:class:`~sslcore.methods.momentum.MomentumEncoder`, no gradient) scores the
crops in ``crops_for_assign``; Sinkhorn turns its scores (plus its queued embeddings, scored by
its own prototypes) into codes; the student, run on every crop, predicts the codes of each
assignment crop from the other crops. After each optimizer step the teacher follows the student,
``t <- m t + (1 - m) s`` with the constant ``LOSS.swav_momentum_loss.momentum``. The teacher runs
in eval mode (BatchNorm running statistics) from ``momentum_eval_mode_iter_start`` on.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from omegaconf import DictConfig
from torch import nn

from sslcore.methods.base import register_method
from sslcore.methods.momentum import MomentumEncoder
from sslcore.methods.multicrop import forward_crops, split_crops
from sslcore.methods.swav import SwAV, find_swav_head, infer_swav_config


@register_method
class SwAVMomentum(SwAV):
    """SwAV whose assignment scores come from a momentum teacher.

    Papers: [0] https://arxiv.org/abs/2006.09882, [1] https://arxiv.org/abs/1911.05722

    Args:
        cfg: the resolved config.
        model: the (possibly DDP-wrapped) student; the teacher is a deep copy of it.
        loss: :class:`~sslcore.losses.swav.SwAVMomentumLoss`.

    Raises:
        ValueError: as :class:`~sslcore.methods.swav.SwAV`.
    """

    loss_names = ("swav_momentum_loss",)

    def __init__(self, cfg: DictConfig, model: nn.Module, loss: Any) -> None:
        super().__init__(cfg, model, loss)
        self.teacher = MomentumEncoder(model)
        self.teacher_head = find_swav_head(self.teacher.encoder)
        self._teacher_outputs: List[torch.Tensor] = []

    @classmethod
    def infer_config(cls, cfg: DictConfig, *, world_size: int) -> Dict[str, Any]:
        """See :func:`~sslcore.methods.swav.infer_swav_config`."""
        return infer_swav_config(cfg, "swav_momentum_loss", world_size=world_size)

    def forward(self, task: Any, batch: Dict[str, Any]) -> List[torch.Tensor]:
        """Student outputs over every crop; the teacher's over ``crops_for_assign`` are kept aside.

        Returns:
            The student's ``[embedding (V*B, D), scores_h (V*B, K_h)...]``, crop-major.
        """
        crops = split_crops(list(batch["data"]), self.num_crops)
        self.teacher.encoder.train(task.iteration < self.loss.momentum_eval_mode_iter_start)
        with torch.no_grad():
            self._teacher_outputs = forward_crops(self.teacher,
                                                  [crops[c] for c in self.loss.crops_for_assign])
        return forward_crops(self.model, list(batch["data"]))

    def compute_loss(self, task: Any, outputs: List[torch.Tensor],
                     batch: Dict[str, Any]) -> torch.Tensor:
        """The student predicts the teacher's codes; the queue is scored by the teacher's prototypes."""
        prototypes = [layer.weight for layer in self.teacher_head.prototypes()]
        return self.loss(outputs, iteration=task.iteration, prototypes=prototypes,
                         assign_outputs=self._teacher_outputs)

    def normalize_prototypes(self) -> None:
        """Normalise the student's and the teacher's prototypes (``normalize_last_layer``)."""
        if self.loss.normalize_last_layer:
            self.head.normalize_prototypes()
            self.teacher_head.normalize_prototypes()

    def on_update(self, task: Any) -> None:
        """Normalise the student's prototypes, move the teacher, normalise the teacher's."""
        if self.loss.normalize_last_layer:
            self.head.normalize_prototypes()
        self.teacher.update(self.model, self.loss.momentum)
        if self.loss.normalize_last_layer:
            self.teacher_head.normalize_prototypes()

    def state_dict(self) -> Dict[str, Any]:
        """The loss's queue and the teacher's weights."""
        return {**super().state_dict(), "momentum_encoder": self.teacher.state_dict_for_checkpoint()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the queue and the teacher (a checkpoint without a teacher keeps the copy)."""
        super().load_state_dict(state)
        if "momentum_encoder" in state:
            self.teacher.load_from_checkpoint(state["momentum_encoder"])
