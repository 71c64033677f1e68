"""SimCLR's NT-Xent (normalised temperature-scaled cross-entropy) loss over all ranks' embeddings.

Registry key ``"simclr_info_nce_loss"``; config ``LOSS.simclr_info_nce_loss`` (VISSL names).

For anchor i with positives P(i) (the other views of the same image) and every other embedding
as a candidate, with z the L2-normalised embeddings and T the temperature::

    loss_i = -log( sum_{p in P(i)} exp(z_i . z_p / T) / sum_{k != i} exp(z_i . z_k / T) )

With two views this is the paper's loss; with V > 2 views the positives are summed inside the
log, as VISSL does. Candidates come from every rank (the global batch), so the loss averaged over
ranks equals the loss of one process that holds the whole batch.

Papers:
    - [0] SimCLR, Chen et al. 2020, https://arxiv.org/abs/2002.05709
    - [1] InfoNCE / CPC, van den Oord et al. 2018, https://arxiv.org/abs/1807.03748
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.engine.distributed import gather_with_grad, get_rank, get_world_size
from sslcore.losses.registry import LOSSES

declare("LOSS.simclr_info_nce_loss", {
    "temperature": Key(0.1, float, "softmax temperature T of NT-Xent (> 0)"),
    "buffer_params": {
        "embedding_dim": Key(-1, int, "D, the embedding width; checked against the input when "
                             "> 0; -1 takes it from the input (VISSL's default is 128)"),
        "effective_batch_size": Key(-1, int, "embedding rows over all ranks, world_size * V * B; "
                                    "checked when > 0; -1 = inferred"),
        "world_size": Key(-1, int, "number of processes; checked when > 0; -1 = inferred"),
    },
})

_BUFFER_KEYS = ("embedding_dim", "effective_batch_size", "world_size")


def build_masks(rows: int, num_views: int, rank: int, world_size: int,
                device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Which gathered embeddings are each local anchor itself, and which are its positives.

    Every rank holds ``rows = V*B`` view-major rows; gathering concatenates ranks in order, so
    column c belongs to rank c // rows and to that rank's sample (c % rows) % B.

    Args:
        rows: V*B, embedding rows per rank.
        num_views: V.
        rank: this process's rank.
        world_size: number of processes.
        device: where to build the masks.

    Returns:
        ``(is_self, is_positive)``, both (V*B, world_size*V*B) bool: the anchor's own column, and
        the other views of the anchor's sample.
    """
    batch = rows // num_views
    row_ids = torch.arange(rows, device=device)
    col_ids = torch.arange(rows * world_size, device=device)
    row_sample = rank * batch + row_ids % batch
    col_sample = (col_ids // rows) * batch + (col_ids % rows) % batch
    is_self = col_ids[None, :] == (rank * rows + row_ids)[:, None]
    is_positive = (row_sample[:, None] == col_sample[None, :]) & ~is_self
    return is_self, is_positive


@LOSSES.register("simclr_info_nce_loss")
class SimCLRInfoNCELoss(nn.Module):
    """NT-Xent over the embeddings of every rank, multi-positive for more than two views.

    Paper: [0] SimCLR, Chen et al. 2020, https://arxiv.org/abs/2002.05709

    The buffer parameters are VISSL's; here they only check the input (the masks are built from
    the input's shape), so -1 leaves them free.

    Args:
        temperature: T > 0; logits are cosine similarities divided by T.
        embedding_dim: expected D, or -1.
        effective_batch_size: expected rows over all ranks (world_size * V * B), or -1.
        world_size: expected number of processes, or -1.
        buffer_params: VISSL's form of the three above, a mapping with any of their keys;
            cannot be combined with them.

    Raises:
        ValueError: if ``temperature`` <= 0, ``buffer_params`` holds an unknown key or repeats
            a keyword argument.

    Example:
        >>> loss_fn = SimCLRInfoNCELoss(temperature=0.1)
        >>> z = torch.randn(2 * 8, 128)        # rows: view 0 of samples 0..7, then view 1
        >>> loss = loss_fn(z, num_views=2)     # scalar
    """

    def __init__(self, temperature: float = 0.1, *, embedding_dim: int = -1,
                 effective_batch_size: int = -1, world_size: int = -1,
                 buffer_params: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"LOSS.simclr_info_nce_loss.temperature must be > 0, got {temperature}")
        given = {"embedding_dim": embedding_dim, "effective_batch_size": effective_batch_size,
                 "world_size": world_size}
        for key, value in dict(buffer_params or {}).items():
            if key not in _BUFFER_KEYS:
                raise ValueError(f"LOSS.simclr_info_nce_loss.buffer_params.{key} is unknown; valid "
                                 f"keys: {', '.join(_BUFFER_KEYS)}")
            if given[key] != -1:
                raise ValueError(f"'{key}' is given both as a keyword and in buffer_params; "
                                 "give it once")
            given[key] = int(value)
        self.temperature = float(temperature)
        self.embedding_dim = given["embedding_dim"]
        self.effective_batch_size = given["effective_batch_size"]
        self.world_size = given["world_size"]

    @classmethod
    def from_config(cls, section: Any) -> "SimCLRInfoNCELoss":
        """Build from ``LOSS.simclr_info_nce_loss`` (``temperature``, ``buffer_params``).

        Raises:
            ValueError: as the constructor.
        """
        if isinstance(section, DictConfig):
            section = OmegaConf.to_container(section, resolve=True)
        return cls(temperature=float(section["temperature"]),
                   buffer_params=section.get("buffer_params") or {})

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def _check(self, embedding: torch.Tensor, num_views: int, world: int) -> None:
        where = "SimCLRInfoNCELoss"
        if embedding.ndim != 2:
            raise ValueError(f"{where} expects embeddings of shape (V*B, D), got {tuple(embedding.shape)}")
        rows, dim = embedding.shape
        if num_views < 2:
            raise ValueError(f"{where}: num_views must be >= 2 (positives are other views), got {num_views}")
        if rows == 0 or rows % num_views:
            raise ValueError(f"{where}: {rows} rows cannot be split into num_views={num_views} "
                             "equal view blocks; rows must be V*B, view-major")
        if self.embedding_dim > 0 and dim != self.embedding_dim:
            raise ValueError(f"{where}: embedding width {dim} != LOSS.simclr_info_nce_loss."
                             f"buffer_params.embedding_dim={self.embedding_dim}; set it to {dim} or -1")
        if self.world_size > 0 and world != self.world_size:
            raise ValueError(f"{where}: running on {world} process(es) but LOSS.simclr_info_nce_loss."
                             f"buffer_params.world_size={self.world_size}; set it to {world} or -1")
        if self.effective_batch_size > 0 and rows * world != self.effective_batch_size:
            raise ValueError(f"{where}: {rows * world} embedding rows over all ranks but "
                             "LOSS.simclr_info_nce_loss.buffer_params.effective_batch_size="
                             f"{self.effective_batch_size}; set it to {rows * world} or -1")

    def forward(self, embedding: Union[torch.Tensor, Sequence[torch.Tensor]],
                num_views: int = 2) -> torch.Tensor:
        """Compute the loss of this rank's anchors against the global batch.

        Args:
            embedding: (V*B, D) embeddings of this rank, view-major: rows [view 0 of
                samples 0..B-1, view 1 of samples 0..B-1, ...]; every rank must hold the same
                V*B. A list holding one such tensor (a model's output) is accepted.
            num_views: V >= 2, views per sample.

        Returns:
            Scalar loss (float32, or float64 for float64 input; float16/bfloat16 input is
            computed in float32), the mean over this rank's V*B anchors. Its gradient reaches
            every rank's embeddings through :func:`~sslcore.engine.distributed.gather_with_grad`,
            so with DDP's gradient averaging training matches one process on the global batch.

        Raises:
            ValueError: if the shape does not fit ``num_views`` or disagrees with the buffer
                parameters.
        """
        if isinstance(embedding, (list, tuple)):
            if len(embedding) != 1:
                raise ValueError(f"SimCLRInfoNCELoss takes one embedding tensor, got a list of "
                                 f"{len(embedding)}")
            embedding = embedding[0]
        world, rank = get_world_size(), get_rank()
        self._check(embedding, num_views, world)
        if embedding.dtype not in (torch.float32, torch.float64):
            embedding = embedding.float()  # float16 / bfloat16 under autocast
        local = F.normalize(embedding, p=2, dim=1)
        everyone = gather_with_grad(local)
        rows = local.shape[0]
        with torch.autocast(device_type=local.device.type, enabled=False):  # keep full precision
            logits = local @ everyone.t() / self.temperature

        is_self, is_positive = build_masks(rows, num_views, rank, world, local.device)
        log_all = torch.logsumexp(logits.masked_fill(is_self, float("-inf")), dim=1)
        log_positive = torch.logsumexp(logits.masked_fill(~is_positive, float("-inf")), dim=1)
        return (log_all - log_positive).mean()
