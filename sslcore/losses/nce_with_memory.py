"""NCE (or InfoNCE) of embeddings against a memory bank: NPID, NPID++ and PIRL's loss.

Registry key ``"nce_loss_with_memory"``; config ``LOSS.nce_loss_with_memory`` (VISSL names).

For a sample i with L2-normalised embedding z_i, its memory row m_{y_i} (the positive) and K
memory rows m_{n_ik} drawn uniformly from the N rows (the negatives), with temperature T::

    s_i0 = z_i . m_{y_i} / T,   s_ik = z_i . m_{n_ik} / T

``loss_type: nce`` (NCE with a uniform noise distribution, NPID [0] eq. 5-6): with
P(x) = exp(s) / Z and the noise probability p_n = 1/N, where Z = N * mean(exp(s)) is fixed on
the first batch (over all ranks) unless ``norm_constant`` > 0 gives it::

    loss = -1/B * sum_i [ log(P_i0 / (P_i0 + K p_n + eps))
                          + sum_k log(K p_n / (P_ik + K p_n + eps)) ],   eps = float32 eps

``loss_type: cross_entropy`` (InfoNCE [2]): ``loss = mean_i CE([s_i0, s_i1, ..., s_iK], 0)``.

With several embeddings per sample (PIRL [1]: patches and image), one term per embedding, each
against the same memory, weighted by ``loss_weights`` and summed. Only the embeddings receive
gradients; the memory bank itself, the negative sampling and its update belong to the method
(:mod:`sslcore.methods.npid`), which reads ``memory_params``, ``negative_sampling_params``,
``update_mem_with_emb_index`` and ``num_train_samples`` from this same section.

Papers:
    - [0] NPID, Wu et al. 2018, https://arxiv.org/abs/1805.01978
    - [1] PIRL (and NPID++), Misra & van der Maaten 2020, https://arxiv.org/abs/1912.01991
    - [2] InfoNCE / CPC, van den Oord et al. 2018, https://arxiv.org/abs/1807.03748
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.engine.distributed import all_reduce_mean
from sslcore.losses.registry import LOSSES

log = logging.getLogger(__name__)

LOSS_TYPES = ("nce", "cross_entropy")
SAMPLING_TYPES = ("random",)

declare("LOSS.nce_loss_with_memory", {
    "loss_type": Key("nce", str, "nce (NPID's NCE) or cross_entropy (InfoNCE)", choices=LOSS_TYPES),
    "norm_embedding": Key(True, bool, "L2-normalise the embeddings before scoring them"),
    "temperature": Key(0.07, float, "T > 0: scores are z . m / T"),
    "loss_weights": Key([1.0], list, "one weight per embedding (model output); PIRL: "
                        "[patches, images] = [0.5, 0.5]"),
    "norm_constant": Key(-1.0, float, "NCE's partition constant Z; -1: N * mean(exp(score)) of the "
                         "first batch, then fixed (saved in the checkpoint)"),
    "ignore_index": Key(-1, int, "samples whose data_idx equals this are left out (never happens "
                        "with sslcore's datasets; kept for VISSL configs)"),
    "update_mem_with_emb_index": Key(-100, int, "with update_mem_on_forward False: the output "
                                     "whose embeddings update the memory (PIRL: 1, the images)"),
    "negative_sampling_params": {
        "num_negatives": Key(16000, int, "K, memory rows drawn per sample as negatives"),
        "type": Key("random", str, "random: uniform over the memory, seeded by (SEED_VALUE, "
                    "iteration, output, sample id)", choices=SAMPLING_TYPES),
    },
    "memory_params": {
        "memory_size": Key(-1, int, "rows of the memory bank; -1 = num_train_samples"),
        "embedding_dim": Key(128, int, "D, the width of the head's output"),
        "momentum": Key(0.5, float, "m: a row becomes normalize(m * row + (1 - m) * embedding)"),
        "norm_init": Key(True, bool, "L2-normalise the random initial memory rows"),
        "update_mem_on_forward": Key(True, bool, "True: every output updates the memory; False: only "
                                     "output update_mem_with_emb_index"),
    },
    "num_train_samples": Key(-1, int, "N, samples in the training set (the memory is indexed by "
                             "sample id); -1 = inferred from DATA.TRAIN"),
})


@LOSSES.register("nce_loss_with_memory")
class NCELossWithMemory(nn.Module):
    """NCE / InfoNCE of one or more embeddings per sample against memory-bank rows.

    Papers: [0] https://arxiv.org/abs/1805.01978, [1] https://arxiv.org/abs/1912.01991,
    [2] https://arxiv.org/abs/1807.03748

    Args:
        loss_type: ``nce`` or ``cross_entropy``.
        norm_embedding: L2-normalise embeddings first.
        temperature: T > 0.
        loss_weights: one weight per embedding term.
        norm_constant: Z > 0, or -1 to set it from the first batch.
        ignore_index: sample ids equal to it are skipped.

    Raises:
        ValueError: unknown ``loss_type``, ``temperature`` <= 0, empty ``loss_weights``, or
            ``norm_constant`` neither -1 nor > 0.

    Example:
        >>> loss_fn = NCELossWithMemory(loss_type="nce", temperature=0.07)
        >>> memory = F.normalize(torch.randn(1000, 128), dim=1)          # (N, D)
        >>> ids = torch.arange(8)                                         # (B,)
        >>> negatives = torch.randint(0, 1000, (8, 64))                   # (B, K)
        >>> loss = loss_fn(torch.randn(8, 128), ids, memory, [negatives])
    """

    def __init__(self, *, loss_type: str = "nce", norm_embedding: bool = True,
                 temperature: float = 0.07, loss_weights: Sequence[float] = (1.0,),
                 norm_constant: float = -1.0, ignore_index: int = -1) -> None:
        super().__init__()
        where = "LOSS.nce_loss_with_memory"
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"{where}.loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if not temperature > 0:
            raise ValueError(f"{where}.temperature must be > 0, got {temperature}")
        if not loss_weights:
            raise ValueError(f"{where}.loss_weights needs one weight per model output, got []")
        if not (norm_constant == -1 or norm_constant > 0):
            raise ValueError(f"{where}.norm_constant must be -1 (from the first batch) or > 0, "
                             f"got {norm_constant}")
        self.loss_type = loss_type
        self.norm_embedding = bool(norm_embedding)
        self.temperature = float(temperature)
        self.loss_weights = [float(w) for w in loss_weights]
        self.ignore_index = int(ignore_index)
        # Z, saved with the checkpoint so a resumed run keeps the constant of its first batch
        self.register_buffer("partition", torch.tensor(float(norm_constant), dtype=torch.float64))

    @classmethod
    def from_config(cls, section: Any) -> "NCELossWithMemory":
        """Build from ``LOSS.nce_loss_with_memory`` (the keys the loss uses; see the module doc)."""
        if isinstance(section, DictConfig):
            section = OmegaConf.to_container(section, resolve=True)
        return cls(loss_type=str(section["loss_type"]), norm_embedding=bool(section["norm_embedding"]),
                   temperature=float(section["temperature"]), loss_weights=list(section["loss_weights"]),
                   norm_constant=float(section["norm_constant"]),
                   ignore_index=int(section.get("ignore_index", -1)))

    def extra_repr(self) -> str:
        return (f"loss_type={self.loss_type}, temperature={self.temperature}, "
                f"loss_weights={self.loss_weights}, Z={self.partition.item():.4g}")

    def scores(self, embedding: torch.Tensor, ids: torch.Tensor, memory: torch.Tensor,
               negatives: torch.Tensor) -> torch.Tensor:
        """Scores s = z . m / T of every sample against its positive and negative memory rows.

        Args:
            embedding: (B, D) float, normalised or not per ``norm_embedding``.
            ids: (B,) int64 rows of the positives (the samples' own ids).
            memory: (N, D) float memory bank (no gradient flows into it).
            negatives: (B, K) int64 memory rows.

        Returns:
            (B, 1 + K) float32/float64 scores; column 0 is the positive.
        """
        z = F.normalize(embedding, p=2, dim=1) if self.norm_embedding else embedding
        rows = torch.cat([ids[:, None], negatives], dim=1)  # (B, 1 + K)
        weights = memory.detach()[rows].to(z.dtype)           # (B, 1 + K, D)
        return torch.bmm(weights, z[:, :, None]).squeeze(2) / self.temperature

    def _nce(self, scores: torch.Tensor, num_items: int) -> torch.Tensor:
        prob = torch.exp(scores)
        if self.partition.item() < 0:
            with torch.no_grad():
                mean = all_reduce_mean(prob.mean().double()).item()
            self.partition.fill_(mean * num_items)
            log.info("NCE partition constant Z set to %.6g from the first batch", self.partition.item())
        prob = prob / self.partition.item()
        noise = scores.shape[1] - 1
        kpn = noise / float(num_items)
        eps = float(np.finfo(np.float32).eps)
        log_pos = torch.log(prob[:, 0] / (prob[:, 0] + kpn + eps))
        log_neg = torch.log(kpn / (prob[:, 1:] + kpn + eps))
        return -(log_pos.sum() + log_neg.sum()) / scores.shape[0]

    def forward(self, embeddings: Union[torch.Tensor, Sequence[torch.Tensor]], ids: torch.Tensor,
                memory: torch.Tensor, negatives: Union[torch.Tensor, Sequence[torch.Tensor]]
                ) -> torch.Tensor:
        """Weighted sum over embedding terms of NCE / InfoNCE against the memory.

        Args:
            embeddings: (B, D) or a list of T such tensors (one per model output).
            ids: (B,) int64 sample ids, the rows of the positives; ids equal to ``ignore_index``
                are skipped.
            memory: (N, D) memory bank.
            negatives: (B, K) int64 rows, or a list of T of them (one per term; a single tensor
                serves every term).

        Returns:
            Scalar loss (float32, or float64 for float64 input; half input is computed in float32),
            the mean over this rank's samples; the NCE constant Z comes from all ranks.

        Raises:
            ValueError: shapes that disagree, fewer ``loss_weights`` than terms, or ids outside
                the memory.
        """
        terms: List[torch.Tensor] = [embeddings] if isinstance(embeddings, torch.Tensor) else list(embeddings)
        negs = [negatives] * len(terms) if isinstance(negatives, torch.Tensor) else list(negatives)
        self._check(terms, ids, memory, negs)
        keep: Optional[torch.Tensor] = ids != self.ignore_index
        if bool(keep.all()):
            keep = None
        total = terms[0].new_zeros((), dtype=torch.float32)
        with torch.autocast(device_type=memory.device.type, enabled=False):
            for t, (emb, neg) in enumerate(zip(terms, negs)):
                if emb.dtype not in (torch.float32, torch.float64):
                    emb = emb.float()
                rows_ids, rows_neg = (ids, neg) if keep is None else (ids[keep], neg[keep])
                s = self.scores(emb if keep is None else emb[keep], rows_ids, memory, rows_neg)
                if self.loss_type == "nce":
                    term = self._nce(s, memory.shape[0])
                else:
                    term = F.cross_entropy(s, torch.zeros(len(s), dtype=torch.long, device=s.device))
                total = total + self.loss_weights[t] * term
        return total

    def _check(self, terms: List[torch.Tensor], ids: torch.Tensor, memory: torch.Tensor,
               negs: List[torch.Tensor]) -> None:
        where = "NCELossWithMemory"
        if len(terms) > len(self.loss_weights):
            raise ValueError(f"{where}: {len(terms)} model outputs but LOSS.nce_loss_with_memory."
                             f"loss_weights has {len(self.loss_weights)}; give one weight per output")
        if len(negs) != len(terms):
            raise ValueError(f"{where}: {len(negs)} negative index tensors for {len(terms)} outputs")
        if memory.ndim != 2 or ids.ndim != 1:
            raise ValueError(f"{where}: memory must be (N, D) and ids (B,), got "
                             f"{tuple(memory.shape)} and {tuple(ids.shape)}")
        for emb, neg in zip(terms, negs):
            if emb.ndim != 2 or emb.shape != (len(ids), memory.shape[1]):
                raise ValueError(f"{where}: embeddings {tuple(emb.shape)} do not match {len(ids)} ids "
                                 f"and memory width {memory.shape[1]}; set LOSS.nce_loss_with_memory."
                                 f"memory_params.embedding_dim to the head's output width")
            if neg.ndim != 2 or len(neg) != len(ids):
                raise ValueError(f"{where}: negatives must be (B, K) with B={len(ids)}, "
                                 f"got {tuple(neg.shape)}")
        valid = ids[ids != self.ignore_index]
        if len(valid) and (int(valid.min()) < 0 or int(valid.max()) >= memory.shape[0]):
            raise ValueError(f"{where}: sample ids span [{int(valid.min())}, {int(valid.max())}] but the "
                             f"memory has {memory.shape[0]} rows; LOSS.nce_loss_with_memory."
                             "num_train_samples must be the training set's size")
