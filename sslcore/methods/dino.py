"""DINO: self-distillation with no labels; a momentum teacher on the global crops, a student on all.

- [0] DINO, Caron et al. 2021, https://arxiv.org/abs/2104.14294

One step, as the method's hook points run it::

    forward:    teacher logits = teacher(crops_for_teacher)      (no gradient)
                student logits = model(every crop)                 (multi-crop, several sizes)
    loss:       DINO cross-entropy with centring and the step's teacher temperature
    on_update:  teacher <- m teacher + (1 - m) student,  m: cosine from LOSS.dino_loss.momentum to 1
                center  <- EMA of the global batch's teacher logits

Crops are numbered in the collated order: ``multicrop_collator`` groups crops by resolution in
order of first appearance (crop j of a group is rows j*B..j*B+B-1 of its tensor), which is the
transform order for ImgPilToMultiCrop (all large crops, then all small ones). The teacher is a
copy of the whole model (trunk and dino_head) with stochastic depth and dropout switched off, as
in [0]. Teacher weights and the center are the method's checkpoint state. The prototypes can be
kept fixed during the first epoch, as in [0], with VISSL's MODEL.TEMP_FROZEN_PARAMS_ITER_MAP
(applied by the engine).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslcore.methods.base import SSLMethod, register_method
from sslcore.methods.momentum import MomentumEncoder, cosine_momentum
from sslcore.methods.multicrop import count_crops, split_crops


def disable_stochastic_layers(module: nn.Module) -> None:
    """Set dropout probabilities and stochastic-depth rates (timm's ``drop_prob``) to 0 in place."""
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0


@register_method
class DINO(SSLMethod):
    """DINO: student on every crop, momentum teacher on ``crops_for_teacher``.

    Args:
        cfg: the resolved config (LOSS.dino_loss with num_crops inferred).
        model: the student (trunk + dino_head), DDP-wrapped or not; copied once into the teacher.
        loss: a :class:`sslcore.losses.dino.DINOLoss`.
    """

    loss_names = ("dino_loss",)

    def __init__(self, cfg: DictConfig, model: Any, loss: Any) -> None:
        super().__init__(cfg, model, loss)
        self.teacher = MomentumEncoder(model)
        disable_stochastic_layers(self.teacher.encoder)
        self.num_crops = int(loss.num_crops) if int(loss.num_crops) > 0 else \
            count_crops(list(cfg.DATA.TRAIN.TRANSFORMS))
        self._teacher_output: Optional[torch.Tensor] = None

    @classmethod
    def infer_config(cls, cfg: DictConfig, *, world_size: int) -> Dict[str, Any]:
        """``LOSS.dino_loss.num_crops`` from the transforms; ``output_dim`` from the last head
        when it is a dino_head.

        Raises:
            ValueError: fewer than 2 crops, or crops_for_teacher beyond the crops.
        """
        crops = count_crops(list(cfg.DATA.TRAIN.TRANSFORMS))
        teacher_crops = list(cfg.LOSS.dino_loss.crops_for_teacher)
        if crops < 2 or max(teacher_crops, default=0) >= crops:
            raise ValueError(f"DINO needs at least 2 crops per image and crops_for_teacher="
                             f"{teacher_crops} among them; DATA.TRAIN.TRANSFORMS makes {crops}. "
                             "Start the transforms with ImgPilToMultiCrop (or ImgReplicatePil)")
        out: Dict[str, Any] = {"LOSS.dino_loss.num_crops": crops}
        heads = OmegaConf.to_container(cfg.MODEL.HEAD.PARAMS, resolve=True) or []
        if heads and heads[-1][0] == "dino_head" and heads[-1][1].get("num_clusters"):
            out["LOSS.dino_loss.output_dim"] = int(heads[-1][1]["num_clusters"][0])
        return out

    def forward(self, task: Any, batch: Dict[str, Any]) -> List[torch.Tensor]:
        """Teacher logits of the teacher crops, then the student's logits of every crop."""
        crops = split_crops(list(batch["data"]), self.num_crops)
        teacher_input = [crops[i] for i in self.loss.crops_for_teacher]
        self._teacher_output = self.teacher(teacher_input)[0]
        return self.model(list(batch["data"]))

    def compute_loss(self, task: Any, outputs: List[torch.Tensor],
                     batch: Dict[str, Any]) -> torch.Tensor:
        """DINO loss at this step's teacher temperature."""
        return self.loss(outputs[0], self._teacher_output, self.loss.teacher_temp(task.iteration))

    def momentum(self, task: Any) -> float:
        """The teacher's EMA coefficient at the current step (cosine to 1 over the run)."""
        return cosine_momentum(self.loss.momentum, task.iteration / task.max_iteration)

    def on_update(self, task: Any) -> None:
        """After the optimizer step: EMA-update the teacher, then the center."""
        self.teacher.update(self.model, self.momentum(task))
        if self._teacher_output is not None:
            self.loss.update_center(self._teacher_output)
        self._teacher_output = None

    def state_dict(self) -> Dict[str, Any]:
        """``{"loss": the center, "teacher": the teacher's weights}``."""
        return {"loss": self.loss.state_dict(), "teacher": self.teacher.state_dict_for_checkpoint()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore center and teacher (without a teacher: a copy of the restored model)."""
        super().load_state_dict(state)
        if "teacher" in state:
            self.teacher.load_from_checkpoint(state["teacher"])
        else:
            self.teacher.update(self.model, 0.0)
