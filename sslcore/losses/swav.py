"""SwAV's swapped-prediction loss, with an embedding queue, and its momentum-teacher variant.

Registry keys ``"swav_loss"`` and ``"swav_momentum_loss"``; config ``LOSS.swav_loss`` and
``LOSS.swav_momentum_loss`` (VISSL names).

For every crop c in ``crops_for_assign`` the codes q_c are computed by Sinkhorn-Knopp
(:mod:`sslcore.losses.sinkhorn`) from that crop's prototype scores over the global batch (plus
the queue); every other crop p then predicts them::

    loss = mean_heads mean_{c in crops_for_assign} mean_{p != c} mean_b
               - sum_k q_c[b, k] * log softmax(scores_p[b] / T)[k]

In ``swav_momentum_loss`` the scores that give the codes come from a momentum teacher (an EMA
copy of the model, :mod:`sslcore.methods.swav_momentum`); the student predicts them.

The queue keeps the last ``queue_length`` embeddings of each assignment crop of the *global*
batch, newest first, identical on every rank (so rank 0's checkpoint holds all of it). Each rank
adds its share of the queue as extra Sinkhorn columns; the union is the whole queue, as on one
process.

Papers:
    - [0] SwAV, Caron et al. 2020, https://arxiv.org/abs/2006.09882
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.engine.distributed import gather_no_grad, get_rank, get_world_size
from sslcore.losses.registry import LOSSES
from sslcore.losses.sinkhorn import sinkhorn_knopp

log = logging.getLogger(__name__)


def _swav_keys(extra: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "embedding_dim": Key(128, int, "D, the embedding width; inferred from the swav_head's last "
                             "'dims' entry"),
        "temperature": Key(0.1, float, "softmax temperature T of the swapped prediction (> 0)"),
        "use_double_precision": Key(False, bool, "run Sinkhorn and the loss in float64 (avoids NaN "
                                    "with small epsilon)"),
        "normalize_last_layer": Key(True, bool, "L2-normalise each prototype at start and after "
                                    "every optimizer step"),
        "num_iters": Key(3, int, "Sinkhorn-Knopp iterations (>= 1)"),
        "epsilon": Key(0.05, float, "entropy weight of the Sinkhorn problem (> 0)"),
        "num_crops": Key(2, int, "crops per image; inferred from DATA.TRAIN.TRANSFORMS"),
        "crops_for_assign": Key([0, 1], list, "crops whose codes the other crops predict"),
        "num_prototypes": Key([3000], list, "K per prototype layer; inferred from the swav_head's "
                              "num_clusters"),
        "temp_hard_assignment_iters": Key(0, int, "one-hot (argmax) codes for the first N "
                                          "iterations"),
        "output_dir": Key(".", str, "where tensors are dumped when the loss is NaN; '.' (default) "
                          "is replaced by CHECKPOINT.DIR"),
        "queue": {
            "queue_length": Key(0, int, "embeddings kept per assignment crop over all ranks; "
                                "rounded down to a multiple of the global batch; 0 = no queue"),
            "start_iter": Key(0, int, "first iteration whose codes use the queue"),
            "local_queue_length": Key(0, int, "queue_length / world size; inferred"),
        },
        **extra,
    }


declare("LOSS.swav_loss", _swav_keys({}))
declare("LOSS.swav_momentum_loss", _swav_keys({
    "momentum": Key(0.99, float, "EMA coefficient of the teacher (constant)"),
    "momentum_eval_mode_iter_start": Key(0, int, "from this iteration on the teacher runs in eval "
                                         "mode (BatchNorm running statistics)"),
}))


class SwAVLoss(nn.Module):
    """Swapped prediction of Sinkhorn codes between crops, over every prototype layer.

    Paper: [0] SwAV, Caron et al. 2020, https://arxiv.org/abs/2006.09882

    Args:
        temperature: T > 0.
        crops_for_assign: crop indices whose codes are predicted, e.g. [0, 1].
        num_crops: V, crops per image.
        num_iters: Sinkhorn iterations >= 1.
        epsilon: Sinkhorn entropy weight > 0.
        use_double_precision: Sinkhorn and log-softmax in float64.
        num_prototypes: K per prototype layer.
        embedding_dim: D.
        queue_length: embeddings kept per assignment crop over all ranks (0 = no queue).
        queue_start_iter: first iteration whose codes use the queue.
        temp_hard_assignment_iters: one-hot codes before this iteration.
        output_dir: where to dump tensors when the loss is not finite.
        normalize_last_layer: read by the method (prototype normalisation), kept here for it.

    Raises:
        ValueError: on an invalid setting; the message names the ``LOSS.<name>`` key.

    Example:
        >>> loss_fn = SwAVLoss(num_crops=2, num_prototypes=[10], embedding_dim=8)
        >>> z = F.normalize(torch.randn(2 * 4, 8), dim=1); protos = torch.randn(10, 8)
        >>> loss_fn([z, z @ protos.t()], iteration=0, prototypes=[protos])
    """

    config_name = "swav_loss"

    def __init__(self, *, temperature: float = 0.1, crops_for_assign: Sequence[int] = (0, 1),
                 num_crops: int = 2, num_iters: int = 3, epsilon: float = 0.05,
                 use_double_precision: bool = False, num_prototypes: Sequence[int] = (3000,),
                 embedding_dim: int = 128, queue_length: int = 0, queue_start_iter: int = 0,
                 temp_hard_assignment_iters: int = 0, output_dir: str = ".",
                 normalize_last_layer: bool = True) -> None:
        super().__init__()
        where = f"LOSS.{self.config_name}"
        crops = [int(c) for c in crops_for_assign]
        if not temperature > 0 or not epsilon > 0 or num_iters < 1:
            raise ValueError(f"{where}: temperature and epsilon must be > 0 and num_iters >= 1, got "
                             f"{temperature}, {epsilon}, {num_iters}")
        if num_crops < 2 or not crops or len(set(crops)) != len(crops) \
                or not all(0 <= c < num_crops for c in crops):
            raise ValueError(f"{where}.crops_for_assign={crops} must be distinct crop indices in "
                             f"[0, num_crops={num_crops}), and num_crops >= 2")
        if queue_length < 0 or embedding_dim < 1 or not num_prototypes:
            raise ValueError(f"{where}: need queue.queue_length >= 0, embedding_dim >= 1 and "
                             f"num_prototypes non-empty, got {queue_length}, {embedding_dim}, "
                             f"{list(num_prototypes)}")
        self.temperature, self.epsilon, self.num_iters = float(temperature), float(epsilon), int(num_iters)
        self.crops_for_assign, self.num_crops = crops, int(num_crops)
        self.use_double_precision = bool(use_double_precision)
        self.num_prototypes = [int(k) for k in num_prototypes]
        self.embedding_dim = int(embedding_dim)
        self.queue_length, self.queue_start_iter = int(queue_length), int(queue_start_iter)
        self.temp_hard_assignment_iters = int(temp_hard_assignment_iters)
        self.output_dir = output_dir
        self.normalize_last_layer = bool(normalize_last_layer)
        self.register_buffer("queue", torch.zeros(len(crops), self.queue_length, self.embedding_dim))
        self.register_buffer("queue_fill", torch.zeros((), dtype=torch.int64))

    @classmethod
    def from_config(cls, section: Any) -> "SwAVLoss":
        """Build from ``LOSS.<name>`` (VISSL keys; ``queue`` is a nested section).

        Raises:
            ValueError: as the constructor, or when a key is missing.
        """
        if isinstance(section, DictConfig):
            section = OmegaConf.to_container(section, resolve=True)
        queue = section.get("queue") or {}
        return cls(**cls._extra_kwargs(section), temperature=section["temperature"],
                   crops_for_assign=section["crops_for_assign"], num_crops=section["num_crops"],
                   num_iters=section["num_iters"], epsilon=section["epsilon"],
                   use_double_precision=section["use_double_precision"],
                   num_prototypes=section["num_prototypes"], embedding_dim=section["embedding_dim"],
                   queue_length=int(queue.get("queue_length", 0)),
                   queue_start_iter=int(queue.get("start_iter", 0)),
                   temp_hard_assignment_iters=int(section.get("temp_hard_assignment_iters", 0)),
                   output_dir=str(section.get("output_dir", ".")),
                   normalize_last_layer=section["normalize_last_layer"])

    @classmethod
    def _extra_kwargs(cls, section: Dict[str, Any]) -> Dict[str, Any]:
        return {}

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, epsilon={self.epsilon}, num_iters={self.num_iters}, "
                f"crops_for_assign={self.crops_for_assign}, num_prototypes={self.num_prototypes}, "
                f"queue_length={self.queue_length}")

    @property
    def compute_dtype(self) -> torch.dtype:
        """float64 with ``use_double_precision``, else float32."""
        return torch.float64 if self.use_double_precision else torch.float32

    def _queue_embeddings(self, iteration: int) -> Optional[torch.Tensor]:
        """This rank's share of the filled queue, (A, L_r, D), or None when unused."""
        fill = int(self.queue_fill)
        if self.queue_length == 0 or iteration < self.queue_start_iter or fill == 0:
            return None
        world, rank = get_world_size(), get_rank()
        share = fill // world
        return self.queue[:, rank * share:(rank + 1) * share]

    @torch.no_grad()
    def push_queue(self, embeddings: torch.Tensor) -> None:
        """Put the global batch's assignment-crop embeddings at the front of the queue.

        Args:
            embeddings: (A*B, D) this rank's embeddings of the crops in ``crops_for_assign``,
                crop-major. Collective: gathers every rank's rows (rank order).
        """
        if self.queue_length == 0:
            return
        num_assign = len(self.crops_for_assign)
        local = embeddings.detach().to(self.queue.dtype).reshape(num_assign, -1, self.embedding_dim)
        new = gather_no_grad(local.transpose(0, 1).contiguous()).transpose(0, 1)  # (A, W*B, D)
        if self.queue_length % new.shape[1]:
            raise ValueError(f"LOSS.{self.config_name}.queue.queue_length={self.queue_length} is not a "
                             f"multiple of the global batch {new.shape[1]}; let the engine infer it")
        keep = self.queue_length - new.shape[1]
        self.queue.copy_(torch.cat([new, self.queue[:, :keep]], dim=1))
        self.queue_fill.fill_(min(int(self.queue_fill) + new.shape[1], self.queue_length))

    def _codes(self, scores: torch.Tensor, queue_scores: Optional[torch.Tensor],
               iteration: int) -> torch.Tensor:
        batch = scores.shape[0]
        if queue_scores is not None:
            scores = torch.cat([scores.to(queue_scores.dtype), queue_scores])
        codes = sinkhorn_knopp(scores, epsilon=self.epsilon, num_iters=self.num_iters,
                               hard=iteration < self.temp_hard_assignment_iters,
                               dtype=self.compute_dtype)
        return codes[:batch]

    def _check(self, outputs: Sequence[torch.Tensor]) -> int:
        where = f"{type(self).__name__}"
        if len(outputs) != 1 + len(self.num_prototypes):
            raise ValueError(f"{where} expects [embedding, scores per prototype layer] = "
                             f"{1 + len(self.num_prototypes)} tensors (num_prototypes="
                             f"{self.num_prototypes}), got {len(outputs)}; use the swav_head")
        rows = outputs[0].shape[0]
        if rows % self.num_crops:
            raise ValueError(f"{where}: {rows} rows cannot be split into num_crops={self.num_crops} "
                             "crop blocks; rows must be V*B, crop-major")
        for scores, k in zip(outputs[1:], self.num_prototypes):
            if scores.shape != (rows, k):
                raise ValueError(f"{where}: prototype scores of shape {tuple(scores.shape)}, expected "
                                 f"({rows}, {k}); check LOSS.{self.config_name}.num_prototypes")
        return rows // self.num_crops

    def forward(self, outputs: Sequence[torch.Tensor], *, iteration: int,
                prototypes: Sequence[torch.Tensor],
                assign_outputs: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Swapped-prediction loss of this rank's crops; updates the queue.

        Args:
            outputs: ``[embedding (V*B, D), scores_h (V*B, K_h) per prototype layer]``, rows
                crop-major (crop 0 of samples 0..B-1, crop 1, ...), as the swav_head gives them.
            iteration: optimizer updates done so far (queue start, hard assignments).
            prototypes: weight (K_h, D) per prototype layer, used to score the queue.
            assign_outputs: where the codes come from: ``[embedding (A*B, D), scores_h (A*B, K_h)]``
                for the crops in ``crops_for_assign`` in that order (a momentum teacher); None
                takes them from ``outputs`` (SwAV).

        Returns:
            Scalar loss (float32, or float64 with ``use_double_precision``).

        Raises:
            ValueError: if the shapes do not fit the settings.
            FloatingPointError: if the loss is not finite; the offending tensors are saved to
                ``output_dir`` first and the message names the file.
        """
        batch = self._check(outputs)
        if len(prototypes) != len(self.num_prototypes):
            raise ValueError(f"{type(self).__name__}: {len(prototypes)} prototype weights for "
                             f"{len(self.num_prototypes)} prototype layers")
        num_assign = len(self.crops_for_assign)
        if assign_outputs is None:
            rows = torch.cat([torch.arange(c * batch, (c + 1) * batch) for c in self.crops_for_assign])
            assign_outputs = [o[rows.to(o.device)] for o in outputs]
        queued = self._queue_embeddings(iteration)
        total = outputs[0].new_zeros((), dtype=self.compute_dtype)
        all_codes: List[List[torch.Tensor]] = []
        for h, scores in enumerate(outputs[1:]):
            log_probs = F.log_softmax(scores.to(self.compute_dtype) / self.temperature, dim=1)
            head_codes, head_loss = [], total.new_zeros(())
            for i, crop in enumerate(self.crops_for_assign):
                with torch.no_grad(), torch.autocast(scores.device.type, enabled=False):
                    queue_scores = None
                    if queued is not None:  # full precision: Sinkhorn divides by epsilon
                        queue_scores = queued[i].to(self.compute_dtype) @ \
                            prototypes[h].detach().to(self.compute_dtype).t()
                    codes = self._codes(assign_outputs[1 + h][i * batch:(i + 1) * batch],
                                        queue_scores, iteration)
                head_codes.append(codes)
                others = [p for p in range(self.num_crops) if p != crop]
                crop_loss = sum(-(codes * log_probs[p * batch:(p + 1) * batch]).sum(dim=1).mean()
                                for p in others)
                head_loss = head_loss + crop_loss / len(others)
            all_codes.append(head_codes)
            total = total + head_loss / num_assign
        loss = total / len(self.num_prototypes)
        if not torch.isfinite(loss.detach()):
            self._dump_and_raise(loss, outputs, assign_outputs, all_codes, iteration)
        self.push_queue(assign_outputs[0])
        return loss

    def _dump_and_raise(self, loss: torch.Tensor, outputs: Sequence[torch.Tensor],
                        assign_outputs: Sequence[torch.Tensor], codes: List[List[torch.Tensor]],
                        iteration: int) -> None:
        path = Path(self.output_dir) / f"{self.config_name}_nan_rank{get_rank()}_iter{iteration}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"iteration": iteration, "loss": loss.detach().cpu(),
                    "outputs": [o.detach().cpu() for o in outputs],
                    "assign_outputs": [o.detach().cpu() for o in assign_outputs],
                    "codes": [[c.cpu() for c in head] for head in codes],
                    "queue": self.queue.cpu(), "queue_fill": int(self.queue_fill)}, path)
        raise FloatingPointError(
            f"{self.config_name} is {loss.item()} at iteration {iteration}; embeddings, scores, "
            f"codes and queue saved to {path}. Try LOSS.{self.config_name}.use_double_precision=true, "
            f"a larger LOSS.{self.config_name}.epsilon, or a lower learning rate")


LOSSES.register("swav_loss")(SwAVLoss)


@LOSSES.register("swav_momentum_loss")
class SwAVMomentumLoss(SwAVLoss):
    """SwAV whose codes come from a momentum teacher's scores (pass them as ``assign_outputs``).

    Paper: [0] SwAV, Caron et al. 2020, https://arxiv.org/abs/2006.09882 (the swapped prediction);
    the teacher is an EMA of the model as in MoCo (He et al. 2020, https://arxiv.org/abs/1911.05722).
    The queue holds teacher embeddings, scored by the teacher's prototypes.

    Args:
        momentum: EMA coefficient of the teacher in [0, 1] (used by the method).
        momentum_eval_mode_iter_start: iteration from which the teacher runs in eval mode.
        **kwargs: as :class:`SwAVLoss`.

    Raises:
        ValueError: as :class:`SwAVLoss`, or ``momentum`` outside [0, 1].
    """

    config_name = "swav_momentum_loss"

    def __init__(self, *, momentum: float = 0.99, momentum_eval_mode_iter_start: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"LOSS.swav_momentum_loss.momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.momentum_eval_mode_iter_start = int(momentum_eval_mode_iter_start)

    @classmethod
    def _extra_kwargs(cls, section: Dict[str, Any]) -> Dict[str, Any]:
        return {"momentum": float(section["momentum"]),
                "momentum_eval_mode_iter_start": int(section["momentum_eval_mode_iter_start"])}
