"""DeepCluster-v2: spherical k-means on a memory bank, cluster ids as targets, centroids as prototypes.

Registry key ``"deepclusterv2_loss"``; config ``LOSS.deepclusterv2_loss`` (VISSL names).

State (all of it checkpointed, identical on every rank):

- memory bank ``memory`` (A, N, D): the latest L2-normalised embedding of each training sample
  (row = global sample id, ``data_idx``) for each crop in ``memory_params.crops_for_mb``;
  ``memory_filled`` (N,) marks rows written at least once. Every rank writes the rows of the whole
  global batch (all-gather), so the copies stay equal without synchronising.
- per clustering h (``num_clusters[h]`` = K_h): ``centroids<h>`` (K_h, D) and
  ``assignments[h]`` (N,) cluster ids (-1: not clustered), computed at each epoch start by
  :func:`spherical_kmeans` on the bank of crop ``crops_for_mb[h % A]``.

Loss of one step, z the normalised embeddings of all V crops and C_h the centroids::

    loss = mean_h  CrossEntropy( z C_h^T / T,  assignments[h][data_idx] )

Papers:
    - [0] SwAV (DeepCluster-v2 baseline), Caron et al. 2020, https://arxiv.org/abs/2006.09882 (App. C)
    - [1] DeepCluster, Caron et al. 2018, https://arxiv.org/abs/1807.05520
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.data.seeding import derive_seed
from sslcore.engine.distributed import all_reduce_sum, gather_no_grad, get_world_size
from sslcore.losses.registry import LOSSES

declare("LOSS.deepclusterv2_loss", {
    "DROP_LAST": Key(True, bool, "inferred from DATA.TRAIN.DROP_LAST"),
    "BATCHSIZE_PER_REPLICA": Key(256, int, "inferred from DATA.TRAIN.BATCHSIZE_PER_REPLICA"),
    "num_crops": Key(2, int, "V, crops per image; inferred from DATA.TRAIN.TRANSFORMS"),
    "temperature": Key(0.1, float, "softmax temperature T of the cluster prediction (> 0)"),
    "num_clusters": Key([3000, 3000, 3000], list, "K of each clustering (one k-means each)"),
    "kmeans_iters": Key(10, int, "k-means iterations at each epoch start (>= 1)"),
    "memory_params": {
        "crops_for_mb": Key([0], list, "crops whose embeddings the memory bank keeps"),
        "embedding_dim": Key(128, int, "D, the embedding width"),
    },
    "num_train_samples": Key(-1, int, "N, rows of the memory bank; -1 = the training set's size, "
                             "read when training starts; > 0 is checked against it"),
})

_CHUNK = 8192


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """argmax_k x_i . c_k for every row, in chunks of rows (N x K never materialised at once)."""
    return torch.cat([(chunk @ centroids.t()).argmax(dim=1) for chunk in x.split(_CHUNK)])


def spherical_kmeans(x: torch.Tensor, num_clusters: int, num_iters: int, *,
                     seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means (cosine similarity), deterministic for a given seed.

    Centroids start at ``num_clusters`` distinct rows drawn with ``seed``; each iteration assigns
    every row to its most similar centroid, then moves every non-empty centroid to the
    normalised mean of its rows (an empty cluster keeps its centroid). The returned assignments
    are those of the final centroids. Sums use one-hot matrix products (no atomic adds), so the
    result does not depend on thread scheduling.

    Args:
        x: (N, D) L2-normalised rows.
        num_clusters: K, 1 <= K <= N.
        num_iters: update steps, >= 1.
        seed: seed of the initial centroids.

    Returns:
        ``(centroids (K, D) normalised, assignments (N,) int64 in [0, K))``.

    Raises:
        ValueError: if K is outside [1, N] or ``num_iters`` < 1.

    Example:
        >>> x = F.normalize(torch.randn(100, 8), dim=1)
        >>> centroids, ids = spherical_kmeans(x, 5, 10, seed=0)
    """
    n = x.shape[0]
    if not 1 <= num_clusters <= n or num_iters < 1:
        raise ValueError(f"k-means needs 1 <= K <= N and num_iters >= 1; got K={num_clusters}, "
                         f"N={n} rows, num_iters={num_iters}. Lower LOSS.deepclusterv2_loss."
                         "num_clusters or train on more samples")
    generator = torch.Generator().manual_seed(int(seed))
    start = torch.randperm(n, generator=generator)[:num_clusters].to(x.device)
    centroids = x[start].clone()
    for _ in range(num_iters):
        ids = _nearest(x, centroids)
        sums = torch.zeros_like(centroids)
        counts = torch.zeros(num_clusters, dtype=x.dtype, device=x.device)
        for rows, chunk_ids in zip(x.split(_CHUNK), ids.split(_CHUNK)):
            one_hot = F.one_hot(chunk_ids, num_clusters).to(x.dtype)
            sums += one_hot.t() @ rows
            counts += one_hot.sum(dim=0)
        filled = counts > 0
        centroids[filled] = F.normalize(sums[filled] / counts[filled, None], dim=1)
    return centroids, _nearest(x, centroids)


@LOSSES.register("deepclusterv2_loss")
class DeepClusterV2Loss(nn.Module):
    """Cluster-id prediction against k-means centroids, with the memory bank that feeds k-means.

    Papers: [0] https://arxiv.org/abs/2006.09882, [1] https://arxiv.org/abs/1807.05520

    Args:
        temperature: T > 0.
        num_clusters: K per clustering, e.g. [3000, 3000, 3000].
        kmeans_iters: k-means iterations >= 1.
        crops_for_mb: crops kept in the memory bank (A of them), e.g. [0] or [0, 1].
        embedding_dim: D.
        num_crops: V, crops per image.
        num_train_samples: N, or -1 until :meth:`allocate` is called with the dataset's size.

    Raises:
        ValueError: on an invalid setting; the message names the ``LOSS.deepclusterv2_loss`` key.

    Example:
        >>> loss_fn = DeepClusterV2Loss(num_clusters=[4], crops_for_mb=[0], embedding_dim=8,
        ...                             num_crops=2, num_train_samples=16)
        >>> loss_fn.update_memory(torch.randn(16, 8), torch.arange(16)); loss_fn.cluster(seed=0, phase=0)
        >>> loss_fn(torch.randn(2 * 16, 8), torch.arange(16).repeat(2))
    """

    def __init__(self, *, temperature: float = 0.1, num_clusters: Sequence[int] = (3000, 3000, 3000),
                 kmeans_iters: int = 10, crops_for_mb: Sequence[int] = (0,), embedding_dim: int = 128,
                 num_crops: int = 2, num_train_samples: int = -1) -> None:
        super().__init__()
        where = "LOSS.deepclusterv2_loss"
        crops = [int(c) for c in crops_for_mb]
        if not temperature > 0 or kmeans_iters < 1:
            raise ValueError(f"{where}: temperature must be > 0 and kmeans_iters >= 1, got "
                             f"{temperature}, {kmeans_iters}")
        if not num_clusters or min(num_clusters) < 1 or embedding_dim < 1:
            raise ValueError(f"{where}: num_clusters must be a non-empty list of K >= 1 and "
                             f"memory_params.embedding_dim >= 1, got {list(num_clusters)}, {embedding_dim}")
        if not crops or not all(0 <= c < num_crops for c in crops) or len(set(crops)) != len(crops):
            raise ValueError(f"{where}.memory_params.crops_for_mb={crops} must be distinct crop "
                             f"indices in [0, num_crops={num_crops})")
        self.temperature, self.kmeans_iters = float(temperature), int(kmeans_iters)
        self.num_clusters = [int(k) for k in num_clusters]
        self.crops_for_mb, self.embedding_dim, self.num_crops = crops, int(embedding_dim), int(num_crops)
        self.register_buffer("memory", torch.zeros(len(crops), 0, self.embedding_dim))
        self.register_buffer("memory_filled", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("assignments", torch.zeros(len(self.num_clusters), 0, dtype=torch.int64))
        self.register_buffer("clustered_phase", torch.tensor(-1, dtype=torch.int64))
        for h, k in enumerate(self.num_clusters):
            self.register_buffer(f"centroids{h}", torch.zeros(k, self.embedding_dim))
        if num_train_samples > 0:
            self.allocate(int(num_train_samples))

    @classmethod
    def from_config(cls, section: Any) -> "DeepClusterV2Loss":
        """Build from ``LOSS.deepclusterv2_loss``.

        Raises:
            ValueError: as the constructor.
        """
        if isinstance(section, DictConfig):
            section = OmegaConf.to_container(section, resolve=True)
        memory = section["memory_params"]
        return cls(temperature=float(section["temperature"]), num_clusters=section["num_clusters"],
                   kmeans_iters=int(section["kmeans_iters"]), crops_for_mb=memory["crops_for_mb"],
                   embedding_dim=int(memory["embedding_dim"]), num_crops=int(section["num_crops"]),
                   num_train_samples=int(section["num_train_samples"]))

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, num_clusters={self.num_clusters}, "
                f"kmeans_iters={self.kmeans_iters}, crops_for_mb={self.crops_for_mb}, "
                f"num_train_samples={self.num_train_samples}")

    @property
    def num_train_samples(self) -> int:
        """N, rows of the memory bank (0 before :meth:`allocate`)."""
        return self.memory.shape[1]

    def centroids(self) -> List[torch.Tensor]:
        """The centroids (K_h, D) of every clustering."""
        return [getattr(self, f"centroids{h}") for h in range(len(self.num_clusters))]

    def allocate(self, num_samples: int) -> None:
        """Size the memory bank and the assignments for N samples (emptied), on the current device.

        Raises:
            ValueError: if ``num_samples`` < 1.
        """
        if num_samples < 1:
            raise ValueError(f"LOSS.deepclusterv2_loss.num_train_samples must be >= 1, got {num_samples}")
        device = self.clustered_phase.device
        self.memory = torch.zeros(len(self.crops_for_mb), num_samples, self.embedding_dim, device=device)
        self.memory_filled = torch.zeros(num_samples, dtype=torch.bool, device=device)
        self.assignments = torch.full((len(self.num_clusters), num_samples), -1, dtype=torch.int64,
                                      device=device)
        self.clustered_phase.fill_(-1)

    @torch.no_grad()
    def update_memory(self, embedding: torch.Tensor, data_idx: torch.Tensor) -> None:
        """Write the normalised embeddings of the memory crops of the global batch.

        Args:
            embedding: (A*B, D) this rank's embeddings of the crops in ``crops_for_mb``, in that
                order, crop-major.
            data_idx: (B,) int64 global sample ids of this rank's images.
                Collective: every rank's rows are gathered and written on every rank.

        Raises:
            ValueError: shapes that do not fit, ids outside [0, N), or no memory allocated.
        """
        num_crops, batch = len(self.crops_for_mb), data_idx.shape[0]
        if embedding.shape != (num_crops * batch, self.embedding_dim):
            raise ValueError(f"memory update: embeddings {tuple(embedding.shape)} for {batch} ids; "
                             f"expected ({num_crops} crops x {batch}, {self.embedding_dim})")
        z = F.normalize(embedding.detach().float(), dim=1).reshape(num_crops, batch, -1)
        z = gather_no_grad(z.transpose(0, 1).contiguous()).transpose(0, 1)
        ids = gather_no_grad(data_idx.to(self.memory.device))
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_train_samples):
            raise ValueError(f"memory update: sample ids span [{int(ids.min())}, {int(ids.max())}] but "
                             f"the bank has {self.num_train_samples} rows (num_train_samples)")
        self.memory[:, ids] = z.to(self.memory)
        self.memory_filled[ids] = True

    @torch.no_grad()
    def cluster(self, *, seed: int, phase: int) -> Dict[str, int]:
        """Run k-means for every clustering on the filled rows; set centroids and assignments.

        Clustering h uses crop ``crops_for_mb[h % A]`` and seed (``seed``, ``phase``, h). Every
        rank computes the same result from its identical bank.

        Returns:
            ``{"rows": clustered rows, "empty_clusters": clusters with no row, summed over h}``.

        Raises:
            ValueError: if fewer rows are filled than a K asks for.
        """
        rows = self.memory_filled.nonzero().squeeze(1)
        self.assignments.fill_(-1)
        empty = 0
        for h, k in enumerate(self.num_clusters):
            x = self.memory[h % len(self.crops_for_mb), rows]
            centroids, ids = spherical_kmeans(x, k, self.kmeans_iters,
                                              seed=derive_seed(seed, phase, h))
            self.centroids()[h].copy_(centroids)
            self.assignments[h, rows] = ids
            empty += k - int(torch.unique(ids).numel())
        self.clustered_phase.fill_(int(phase))
        return {"rows": int(rows.numel()), "empty_clusters": empty}

    def forward(self, embedding: torch.Tensor, data_idx: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of every crop against its image's cluster id, averaged over clusterings.

        Args:
            embedding: (V*B, D) embeddings of all crops (normalised here).
            data_idx: (V*B,) int64 global sample id of every row.

        Returns:
            Scalar loss (float32). Rows whose sample has no assignment yet are ignored; the
            sum is divided by the clustered rows of the global batch over the world size, so
            averaging over ranks (DDP) gives the global mean. Collective.

        Raises:
            RuntimeError: if :meth:`cluster` has not run.
            ValueError: on shapes that do not fit.
        """
        if int(self.clustered_phase) < 0:
            raise RuntimeError("deepclusterv2_loss has no clusters yet: the method runs k-means at "
                               "each epoch start (DeepClusterV2.on_phase_start)")
        if embedding.ndim != 2 or embedding.shape[1] != self.embedding_dim \
                or data_idx.shape != embedding.shape[:1]:
            raise ValueError(f"deepclusterv2_loss: embeddings {tuple(embedding.shape)} and ids "
                             f"{tuple(data_idx.shape)}; expected (V*B, {self.embedding_dim}) and (V*B,)")
        z = F.normalize(embedding.float(), dim=1)
        total = z.new_zeros(())
        for h, centroids in enumerate(self.centroids()):
            targets = self.assignments[h, data_idx.to(self.assignments.device)]
            with torch.autocast(z.device.type, enabled=False):  # full-precision logits
                logits = z @ centroids.t() / self.temperature
            # mean over the clustered rows of the global batch (ranks may hold different counts)
            count = all_reduce_sum((targets >= 0).sum().to(z.dtype)) / get_world_size()
            total = total + F.cross_entropy(logits, targets, ignore_index=-1,
                                            reduction="sum") / count.clamp_min(1e-12)
        return total / len(self.num_clusters)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
        """Resize the bank to the checkpoint's N before loading (it is sized at start)."""
        memory = state_dict.get(prefix + "memory")
        if memory is not None and memory.shape[1] != self.num_train_samples:
            self.allocate(int(memory.shape[1]))
        super()._load_from_state_dict(state_dict, prefix, *args)
