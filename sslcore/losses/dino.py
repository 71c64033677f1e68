"""DINO's loss: the student's softmax over K prototypes matches the centred, sharpened teacher's.

Registry key ``"dino_loss"``; config ``LOSS.dino_loss`` (VISSL's names). With student outputs s_v
for every crop v, teacher outputs t_u for the teacher's crops u (the global crops), a center c,
student temperature T_s and teacher temperature T_t::

    P_t(u) = softmax((t_u - c) / T_t)          (centring + sharpening; no gradient)
    P_s(v) = softmax(s_v / T_s)
    loss   = mean over pairs (u, v), v != u, of  mean over samples  H(P_t(u), P_s(v))

with H(a, b) = -sum_k a_k log b_k. After each step the center follows the teacher outputs of the
global batch: c <- ema_center * c + (1 - ema_center) * mean(t) (all ranks). T_t rises linearly
from ``teacher_temp_min`` to ``teacher_temp_max`` over ``teacher_temp_warmup_iters`` iterations.
The teacher (a momentum copy of the student) and the multi-crop bookkeeping belong to the method,
:class:`sslcore.methods.dino.DINO`.

Papers:
    - [0] DINO, Caron et al. 2021, https://arxiv.org/abs/2104.14294 (Eq. 3-4, Algorithm 1)
"""

from __future__ import annotations

from typing import Any, List, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.engine.distributed import all_reduce_sum, get_world_size
from sslcore.losses.registry import LOSSES

declare("LOSS.dino_loss", {
    "momentum": Key(0.996, float, "base EMA coefficient of the teacher; cosine schedule to 1"),
    "student_temp": Key(0.1, float, "student softmax temperature T_s"),
    "teacher_temp_min": Key(0.04, float, "teacher temperature at iteration 0"),
    "teacher_temp_max": Key(0.07, float, "teacher temperature after the warm-up"),
    "teacher_temp_warmup_iters": Key(37500, int, "iterations of the linear teacher-temperature "
                                     "warm-up (VISSL: 30 epochs of ImageNet at batch 1024)"),
    "crops_for_teacher": Key([0, 1], list, "indices of the crops the teacher sees (the global "
                             "crops), in the collated crop order"),
    "ema_center": Key(0.9, float, "EMA coefficient of the center c"),
    "normalize_last_layer": Key(True, bool, "kept for VISSL configs; the dino_head's own "
                                "normalize_last_layer decides whether its last layer is normalised"),
    "output_dim": Key(65536, int, "K, prototypes of the dino_head; inferred from MODEL.HEAD.PARAMS"),
    "num_crops": Key(-1, int, "crops per image; inferred from DATA.TRAIN.TRANSFORMS (-1: from the "
                     "input)"),
})


def teacher_temperature(iteration: int, temp_min: float, temp_max: float, warmup_iters: int) -> float:
    """DINO's teacher-temperature schedule: linear from ``temp_min`` to ``temp_max``, then flat.

    Over iterations 0..warmup_iters-1 the values are ``linspace(temp_min, temp_max, warmup_iters)``;
    from ``warmup_iters`` on, ``temp_max``.

    Args:
        iteration: optimizer updates done before this step (>= 0).
        temp_min: temperature at iteration 0.
        temp_max: final temperature.
        warmup_iters: warm-up length in iterations, >= 0 (0: ``temp_max`` throughout).

    Returns:
        The teacher temperature of the step.
    """
    if iteration >= warmup_iters:
        return float(temp_max)
    if warmup_iters == 1:
        return float(temp_min)
    return float(temp_min + (temp_max - temp_min) * iteration / (warmup_iters - 1))


@LOSSES.register("dino_loss")
class DINOLoss(nn.Module):
    """Cross-entropy between centred-sharpened teacher and student softmaxes over crops.

    Paper: [0] DINO, Caron et al. 2021, https://arxiv.org/abs/2104.14294

    Buffer ``center``: (1, K) float32, saved with the method's checkpoint state.

    Args:
        momentum: base teacher EMA coefficient in [0, 1] (used by the method).
        student_temp: T_s > 0.
        teacher_temp_min, teacher_temp_max: > 0, the warm-up's endpoints.
        teacher_temp_warmup_iters: >= 0.
        crops_for_teacher: distinct crop indices >= 0, at least one.
        ema_center: center EMA coefficient in [0, 1].
        normalize_last_layer: VISSL compatibility only (see the config key).
        output_dim: K >= 1.
        num_crops: crops per image V, or -1 to take it from the input.

    Raises:
        ValueError: for any value outside the ranges above.

    Example:
        >>> loss_fn = DINOLoss(output_dim=1024, crops_for_teacher=[0, 1], num_crops=4)
        >>> student = torch.randn(4 * 8, 1024)     # crop-major rows: crop 0 of 8 images, crop 1, ...
        >>> teacher = torch.randn(2 * 8, 1024)     # crops 0 and 1
        >>> loss = loss_fn(student, teacher, teacher_temp=0.04)
        >>> loss_fn.update_center(teacher)         # after the step
    """

    def __init__(self, momentum: float = 0.996, student_temp: float = 0.1,
                 teacher_temp_min: float = 0.04, teacher_temp_max: float = 0.07,
                 teacher_temp_warmup_iters: int = 37500, crops_for_teacher: Sequence[int] = (0, 1),
                 ema_center: float = 0.9, normalize_last_layer: bool = True,
                 output_dim: int = 65536, num_crops: int = -1) -> None:
        super().__init__()
        crops = [int(c) for c in crops_for_teacher]
        problems = []
        if not 0.0 <= momentum <= 1.0 or not 0.0 <= ema_center <= 1.0:
            problems.append(f"momentum and ema_center must be in [0, 1] (got {momentum}, {ema_center})")
        if min(student_temp, teacher_temp_min, teacher_temp_max) <= 0:
            problems.append("student_temp, teacher_temp_min and teacher_temp_max must be > 0")
        if teacher_temp_warmup_iters < 0 or output_dim < 1:
            problems.append("teacher_temp_warmup_iters must be >= 0 and output_dim >= 1")
        if not crops or min(crops) < 0 or len(set(crops)) != len(crops):
            problems.append(f"crops_for_teacher must be distinct indices >= 0, got {crops}")
        if num_crops != -1 and (num_crops < 2 or (crops and max(crops) >= num_crops)):
            problems.append(f"num_crops must be -1 or >= 2 and > every crops_for_teacher entry, "
                            f"got {num_crops}")
        if problems:
            raise ValueError("LOSS.dino_loss: " + "; ".join(problems))
        self.momentum = float(momentum)
        self.student_temp = float(student_temp)
        self.teacher_temp_min, self.teacher_temp_max = float(teacher_temp_min), float(teacher_temp_max)
        self.teacher_temp_warmup_iters = int(teacher_temp_warmup_iters)
        self.crops_for_teacher: List[int] = crops
        self.ema_center = float(ema_center)
        self.normalize_last_layer = bool(normalize_last_layer)
        self.output_dim = int(output_dim)
        self.num_crops = int(num_crops)
        self.register_buffer("center", torch.zeros(1, self.output_dim))

    @classmethod
    def from_config(cls, section: Any) -> "DINOLoss":
        """Build from ``LOSS.dino_loss`` (every key of the section).

        Raises:
            ValueError: as the constructor.
        """
        if isinstance(section, DictConfig):
            section = OmegaConf.to_container(section, resolve=True)
        return cls(**{k: section[k] for k in (
            "momentum", "student_temp", "teacher_temp_min", "teacher_temp_max",
            "teacher_temp_warmup_iters", "crops_for_teacher", "ema_center", "normalize_last_layer",
            "output_dim", "num_crops") if k in section})

    def extra_repr(self) -> str:
        return (f"output_dim={self.output_dim}, student_temp={self.student_temp}, teacher_temp="
                f"{self.teacher_temp_min}->{self.teacher_temp_max} over "
                f"{self.teacher_temp_warmup_iters} iters, crops_for_teacher={self.crops_for_teacher}")

    def teacher_temp(self, iteration: int) -> float:
        """The teacher temperature at ``iteration`` (see :func:`teacher_temperature`)."""
        return teacher_temperature(iteration, self.teacher_temp_min, self.teacher_temp_max,
                                   self.teacher_temp_warmup_iters)

    def _num_crops(self, student_rows: int, teacher_rows: int) -> int:
        crops_t = len(self.crops_for_teacher)
        batch = teacher_rows // crops_t
        if teacher_rows == 0 or teacher_rows % crops_t or student_rows % batch:
            raise ValueError(f"DINOLoss: teacher rows {teacher_rows} must be len(crops_for_teacher)"
                             f"={crops_t} x B and student rows {student_rows} a multiple of B")
        views = student_rows // batch
        if self.num_crops != -1 and views != self.num_crops:
            raise ValueError(f"DINOLoss: the student output holds {views} crops per image but "
                             f"LOSS.dino_loss.num_crops={self.num_crops}")
        if max(self.crops_for_teacher) >= views:
            raise ValueError(f"DINOLoss: crops_for_teacher={self.crops_for_teacher} but only {views} crops")
        return views

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor,
                teacher_temp: float) -> torch.Tensor:
        """Average cross-entropy over (teacher crop, other student crop) pairs.

        Args:
            student_output: (V*B, K) student logits, crop-major (rows c*B..c*B+B-1: crop c).
                A one-element list is accepted.
            teacher_output: (T*B, K) teacher logits for ``crops_for_teacher``, in that order.
            teacher_temp: T_t > 0 for this step (:meth:`teacher_temp`).

        Returns:
            Scalar loss, float64 for float64 input, else float32 (per-sample means, so DDP's
            averaging equals one process).

        Raises:
            ValueError: if the widths are not K or the row counts do not fit the crops.
        """
        if isinstance(student_output, (list, tuple)):
            student_output = student_output[-1]
        for name, x in (("student", student_output), ("teacher", teacher_output)):
            if x.ndim != 2 or x.shape[1] != self.output_dim:
                raise ValueError(f"DINOLoss: {name} output must be (rows, {self.output_dim}) "
                                 f"(LOSS.dino_loss.output_dim), got {tuple(x.shape)}")
        views = self._num_crops(student_output.shape[0], teacher_output.shape[0])
        dtype = torch.float64 if student_output.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=student_output.device.type, enabled=False):
            student_logp = F.log_softmax(student_output.to(dtype) / self.student_temp, dim=1)
            centered = teacher_output.detach().to(dtype) - self.center.to(dtype)
            teacher_p = F.softmax(centered / teacher_temp, dim=1)
            student_crops = student_logp.chunk(views)
            total, terms = student_logp.new_zeros(()), 0
            for q, crop in zip(teacher_p.chunk(len(self.crops_for_teacher)), self.crops_for_teacher):
                for v, logp in enumerate(student_crops):
                    if v == crop:
                        continue
                    total = total + (-(q * logp).sum(dim=1)).mean()
                    terms += 1
            return total / terms

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """``c <- ema_center * c + (1 - ema_center) * mean of every rank's teacher rows``.

        Args:
            teacher_output: (T*B, K) this rank's teacher logits of the step (every rank the same
                T*B).
        """
        rows = teacher_output.shape[0] * get_world_size()
        batch_center = all_reduce_sum(teacher_output.to(self.center.dtype).sum(dim=0, keepdim=True)) / rows
        self.center.mul_(self.ema_center).add_(batch_center.to(self.center.device),
                                               alpha=1.0 - self.ema_center)
