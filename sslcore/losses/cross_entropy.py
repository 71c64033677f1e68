"""Cross-entropy losses for label-driven training: supervised, RotNet, Jigsaw, ClusterFit.

Two registry keys, both VISSL names:

- ``"CrossEntropyLoss"``: torch's ``nn.CrossEntropyLoss`` chosen by its class name, with its
  keyword arguments under ``LOSS.CrossEntropyLoss`` (``weight``, ``ignore_index``, ``reduction``,
  ``label_smoothing``), as VISSL passes unregistered torch losses by name. One output.
- ``"cross_entropy_multiple_output_single_target"``: one target for a list of outputs (one per
  head chain or evaluated feature); one cross-entropy per output, **summed** over the outputs,
  each averaged over the batch (VISSL's semantics). Each output may be L2-normalised and divided
  by a temperature first: ``CE(normalize(x) / T, y)``.

For logits x (B, K) and a class target y (B,), with weights w (K,) (all ones by default) and
the samples whose target is ``ignore_index`` left out::

    CE_mean = sum_i w[y_i] * (-log softmax(x_i)[y_i]) / sum_i w[y_i]

Label smoothing eps replaces the one-hot target by ``(1 - eps) * onehot + eps / K``. A float
target (B, K) of class probabilities (e.g. from a mixup collator) is accepted as well.

Papers:
    - [0] RotNet, Gidaris et al. 2018, https://arxiv.org/abs/1803.07728
    - [1] Jigsaw, Noroozi & Favaro 2016, https://arxiv.org/abs/1603.09246
    - [2] ClusterFit, Yan et al. 2020, https://arxiv.org/abs/1912.03330
    - [3] Label smoothing, Szegedy et al. 2016, https://arxiv.org/abs/1512.00567
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.losses.registry import LOSSES

_REDUCTIONS = ("mean", "sum")

declare("LOSS.CrossEntropyLoss", {
    "weight": Key(None, list, "per-class weights (K floats), or null for equal weights",
                  nullable=True),
    "ignore_index": Key(-100, int, "samples whose label equals this are left out of the loss "
                        "(torch's default -100; VISSL recipes use -1)"),
    "reduction": Key("mean", str, "'mean' (weighted mean over the kept samples) or 'sum'; "
                     "training needs a scalar, so torch's 'none' is not offered",
                     choices=_REDUCTIONS),
    "label_smoothing": Key(0.0, float, "eps in [0, 1]: the target becomes (1-eps)*onehot + eps/K"),
})
declare("LOSS.cross_entropy_multiple_output_single_target", {
    "weight": Key(None, list, "per-class weights (K floats), or null for equal weights",
                  nullable=True),
    "reduction": Key("mean", str, "per output: 'mean' over the kept samples or 'sum'; the "
                     "outputs' losses are always summed", choices=_REDUCTIONS),
    "ignore_index": Key(-1, int, "samples whose label equals this are left out of the loss"),
    "normalize_output": Key(False, bool, "L2-normalise every output row before the softmax"),
    "temperature": Key(1.0, float, "T > 0: the softmax is taken over output / T"),
    "label_smoothing": Key(0.0, float, "eps in [0, 1]: the target becomes (1-eps)*onehot + eps/K"),
})


def _section_dict(section: Any) -> dict:
    if isinstance(section, DictConfig):
        return OmegaConf.to_container(section, resolve=True)
    return dict(section or {})


def check_targets(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, who: str) -> None:
    """Check that a target fits a (B, K) output: same B, class ids in [0, K) or ignore_index.

    Args:
        logits: (B, K) float output.
        target: (B,) int64 class ids, or (B, K) float class probabilities.
        ignore_index: the id that marks a sample left out.
        who: the loss name, for messages.

    Raises:
        ValueError: wrong shapes, or a class id outside [0, K) (names the largest id and K).
    """
    if logits.ndim != 2:
        raise ValueError(f"{who} expects outputs of shape (B, K), got {tuple(logits.shape)}")
    rows, classes = logits.shape
    if target.shape[0] != rows:
        raise ValueError(f"{who}: output has {rows} rows but the target has {target.shape[0]}; "
                         "every output row needs one label (check the collator)")
    if target.is_floating_point():
        if tuple(target.shape) != (rows, classes):
            raise ValueError(f"{who}: a probability target must be (B, K)={rows, classes}, got "
                             f"{tuple(target.shape)}")
        return
    if target.ndim != 1:
        raise ValueError(f"{who}: class targets must be (B,) integers, got {tuple(target.shape)}")
    bad = ((target < 0) | (target >= classes)) & (target != ignore_index)
    if bool(bad.any()):
        wrong = target[bad].unique()
        raise ValueError(
            f"{who}: labels {wrong[:5].tolist()} are outside [0, {classes}) for an output with "
            f"K={classes} classes (ignore_index={ignore_index}); make the last head layer "
            f"{max(int(wrong.max()) + 1, classes)} wide (one unit per class), or fix the labels")


def _weight_tensor(weight: Optional[Sequence[float]]) -> Optional[torch.Tensor]:
    if weight is None:
        return None
    values = [float(w) for w in weight]
    if not values or min(values) < 0:
        raise ValueError(f"loss weight must be a non-empty list of K values >= 0, got {list(weight)}")
    return torch.tensor(values, dtype=torch.float32)


class _WeightedCE(nn.Module):
    """Shared parts: the class weights as a buffer (moves with ``.to(device)``) and the checks."""

    def __init__(self, *, weight: Optional[Sequence[float]], ignore_index: int, reduction: str,
                 label_smoothing: float, who: str) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"LOSS.{who}.reduction must be one of {list(_REDUCTIONS)} (training needs "
                             f"a scalar), got {reduction!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"LOSS.{who}.label_smoothing must be in [0, 1], got {label_smoothing}")
        self.register_buffer("weight", _weight_tensor(weight), persistent=False)
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self.who = who

    def _one(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_targets(logits, target, self.ignore_index, self.who)
        if self.weight is not None and self.weight.numel() != logits.shape[1]:
            raise ValueError(f"LOSS.{self.who}.weight has {self.weight.numel()} entries but the "
                             f"output has K={logits.shape[1]} classes; give one weight per class")
        return F.cross_entropy(logits, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


@LOSSES.register("CrossEntropyLoss")
class CrossEntropyLoss(_WeightedCE):
    """torch's cross-entropy chosen by its class name, as VISSL passes torch losses.

    Args:
        weight: K per-class weights, or None.
        ignore_index: label that marks a sample left out (torch's default -100).
        reduction: ``"mean"`` (weighted mean over kept samples) or ``"sum"``.
        label_smoothing: eps in [0, 1].

    Raises:
        ValueError: a reduction other than mean/sum, eps outside [0, 1], negative weights.

    Example:
        >>> loss = CrossEntropyLoss(ignore_index=-1)
        >>> loss(torch.randn(8, 10), torch.randint(10, (8,)))   # scalar
    """

    def __init__(self, *, weight: Optional[Sequence[float]] = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(weight=weight, ignore_index=ignore_index, reduction=reduction,
                         label_smoothing=label_smoothing, who="CrossEntropyLoss")

    @classmethod
    def from_config(cls, section: Any) -> "CrossEntropyLoss":
        """Build from ``LOSS.CrossEntropyLoss`` (torch's keyword arguments)."""
        s = _section_dict(section)
        return cls(weight=s.get("weight"), ignore_index=int(s.get("ignore_index", -100)),
                   reduction=str(s.get("reduction", "mean")),
                   label_smoothing=float(s.get("label_smoothing", 0.0)))

    def forward(self, output: Union[torch.Tensor, Sequence[torch.Tensor]],
                target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of one output.

        Args:
            output: (B, K) logits, or a list holding exactly one such tensor.
            target: (B,) int64 class ids, or (B, K) float class probabilities.

        Returns:
            Scalar loss.

        Raises:
            ValueError: several outputs (use cross_entropy_multiple_output_single_target),
                shape mismatches or labels outside [0, K).
        """
        if isinstance(output, (list, tuple)):
            if len(output) != 1:
                raise ValueError(f"CrossEntropyLoss takes one output, the model gave {len(output)}; "
                                 "use LOSS.name=cross_entropy_multiple_output_single_target for "
                                 "several heads")
            output = output[0]
        return self._one(output, target)


@LOSSES.register("cross_entropy_multiple_output_single_target")
class CrossEntropyMultipleOutputSingleTargetLoss(_WeightedCE):
    """One target, several outputs: the sum over outputs of ``CE(normalize?(x) / T, y)``.

    Papers: [0] RotNet https://arxiv.org/abs/1803.07728, [1] Jigsaw
    https://arxiv.org/abs/1603.09246, [2] ClusterFit https://arxiv.org/abs/1912.03330.

    Args:
        weight: K per-class weights, or None (the same K for every output).
        ignore_index: label that marks a sample left out (VISSL's default -1).
        reduction: per output, ``"mean"`` over the kept samples or ``"sum"``.
        normalize_output: L2-normalise each output row before dividing by T.
        temperature: T > 0.
        label_smoothing: eps in [0, 1].

    Raises:
        ValueError: T <= 0, a reduction other than mean/sum, eps outside [0, 1].

    Example:
        >>> loss = CrossEntropyMultipleOutputSingleTargetLoss()
        >>> loss([torch.randn(8, 4), torch.randn(8, 4)], torch.randint(4, (8,)))  # CE_1 + CE_2
    """

    def __init__(self, *, weight: Optional[Sequence[float]] = None, ignore_index: int = -1,
                 reduction: str = "mean", normalize_output: bool = False, temperature: float = 1.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(weight=weight, ignore_index=ignore_index, reduction=reduction,
                         label_smoothing=label_smoothing,
                         who="cross_entropy_multiple_output_single_target")
        if not temperature > 0:
            raise ValueError("LOSS.cross_entropy_multiple_output_single_target.temperature must be "
                             f"> 0, got {temperature}")
        self.normalize_output = bool(normalize_output)
        self.temperature = float(temperature)

    @classmethod
    def from_config(cls, section: Any) -> "CrossEntropyMultipleOutputSingleTargetLoss":
        """Build from ``LOSS.cross_entropy_multiple_output_single_target``."""
        s = _section_dict(section)
        return cls(weight=s.get("weight"), ignore_index=int(s.get("ignore_index", -1)),
                   reduction=str(s.get("reduction", "mean")),
                   normalize_output=bool(s.get("normalize_output", False)),
                   temperature=float(s.get("temperature", 1.0)),
                   label_smoothing=float(s.get("label_smoothing", 0.0)))

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, normalize_output={self.normalize_output}, "
                f"ignore_index={self.ignore_index}")

    def forward(self, output: Union[torch.Tensor, Sequence[torch.Tensor]],
                target: torch.Tensor) -> torch.Tensor:
        """Sum of the cross-entropies of every output against the same target.

        Args:
            output: (B, K) logits or a list of them (K may differ between outputs when no
                ``weight`` is set).
            target: (B,) int64 class ids, or (B, K) float class probabilities.

        Returns:
            Scalar loss: ``sum_o CE(output_o, target)``.

        Raises:
            ValueError: an empty list, shape mismatches or labels outside [0, K).
        """
        outputs: List[torch.Tensor] = [output] if isinstance(output, torch.Tensor) else list(output)
        if not outputs:
            raise ValueError("cross_entropy_multiple_output_single_target got no output")
        total = None
        for pred in outputs:
            if self.normalize_output:
                pred = F.normalize(pred, p=2, dim=1)
            term = self._one(pred / self.temperature, target)
            total = term if total is None else total + term
        return total
