"""DeepCluster-v2: k-means on a memory bank at every epoch start, cluster ids as targets.

- [0] SwAV (DeepCluster-v2), Caron et al. 2020, https://arxiv.org/abs/2006.09882 (App. C)
- [1] DeepCluster, Caron et al. 2018, https://arxiv.org/abs/1807.05520

The method drives :class:`sslcore.losses.deepclusterv2.DeepClusterV2Loss`:

- ``on_start``: size the memory bank for the training set and, unless a checkpoint restored it,
  fill it with one pass over the data (no gradient);
- ``on_phase_start``: spherical k-means on the bank, unless this epoch was already clustered
  (a run resumed inside an epoch keeps the epoch's clusters, so it reproduces the straight run);
- every step: cross-entropy of all crops against their image's cluster ids, then the memory
  crops' embeddings of the global batch replace their rows in the bank.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List

import torch
from omegaconf import DictConfig, OmegaConf

from sslcore.methods.base import SSLMethod, register_method
from sslcore.methods.multicrop import count_crops, forward_crops, split_crops

log = logging.getLogger(__name__)


@register_method
class DeepClusterV2(SSLMethod):
    """DeepCluster-v2 over multi-crop batches; the head gives the embedding (e.g. ``mlp``).

    Papers: [0] https://arxiv.org/abs/2006.09882, [1] https://arxiv.org/abs/1807.05520
    """

    loss_names = ("deepclusterv2_loss",)

    @classmethod
    def infer_config(cls, cfg: DictConfig, *, world_size: int) -> Dict[str, Any]:
        """num_crops from TRANSFORMS; BATCHSIZE_PER_REPLICA and DROP_LAST from DATA.TRAIN.

        ``num_train_samples`` is not read here (it needs the data): -1 is filled at start.

        Raises:
            ValueError: a memory crop index that the transforms do not make.
        """
        crops = count_crops(OmegaConf.to_container(cfg.DATA.TRAIN.TRANSFORMS, resolve=True))
        memory_crops = list(cfg.LOSS.deepclusterv2_loss.memory_params.crops_for_mb)
        if any(c >= crops for c in memory_crops):
            raise ValueError(f"LOSS.deepclusterv2_loss.memory_params.crops_for_mb={memory_crops} but "
                             f"DATA.TRAIN.TRANSFORMS makes {crops} crop(s) per image")
        prefix = "LOSS.deepclusterv2_loss"
        return {f"{prefix}.num_crops": crops,
                f"{prefix}.BATCHSIZE_PER_REPLICA": int(cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA),
                f"{prefix}.DROP_LAST": bool(cfg.DATA.TRAIN.DROP_LAST)}

    def forward(self, task: Any, batch: Dict[str, Any]) -> List[torch.Tensor]:
        """Embeddings (V*B, D) of every crop, crop-major."""
        return forward_crops(self.model, list(batch["data"]))

    def _memory_rows(self, embedding: torch.Tensor, batch_size: int) -> torch.Tensor:
        return torch.cat([embedding[c * batch_size:(c + 1) * batch_size]
                          for c in self.loss.crops_for_mb])

    def compute_loss(self, task: Any, outputs: List[torch.Tensor],
                     batch: Dict[str, Any]) -> torch.Tensor:
        """Cluster-id cross-entropy, then the bank takes this batch's memory-crop embeddings."""
        embedding, ids = outputs[0], batch["data_idx"]
        loss = self.loss(embedding, ids)
        batch_size = embedding.shape[0] // self.loss.num_crops
        self.loss.update_memory(self._memory_rows(embedding, batch_size), ids[:batch_size])
        return loss

    @torch.no_grad()
    def fill_memory(self, task: Any) -> None:
        """One pass over the training data into the bank.

        The pass draws its own crops (the loader's epoch -1): were they epoch 0's, the first
        epoch would be trained on the very crops it was clustered on, a trivial target.
        """
        from sslcore.data import set_loader_epoch

        start = time.perf_counter()
        set_loader_epoch(task.loader, -1)
        for batch in task.loader:
            crops = split_crops(list(batch["data"]), self.loss.num_crops)
            size = crops[0].shape[0]
            chosen = [crops[c].to(task.device, non_blocking=True) for c in self.loss.crops_for_mb]
            embedding = forward_crops(self.model, chosen)[0]
            self.loss.update_memory(embedding, batch["data_idx"][:size].to(task.device))
        log.info("deepclusterv2: memory bank filled with %d of %d samples in %.1fs",
                 int(self.loss.memory_filled.sum()), self.loss.num_train_samples,
                 time.perf_counter() - start)

    def on_start(self, task: Any) -> None:
        """Size the bank for the training set; fill it unless a checkpoint restored it.

        Raises:
            ValueError: if ``LOSS.deepclusterv2_loss.num_train_samples`` (> 0) or a restored bank
                disagrees with the dataset's size.
        """
        size = len(task.loader.dataset)
        configured = int(self.cfg.LOSS.deepclusterv2_loss.num_train_samples)
        if configured > 0 and configured != size:
            raise ValueError(f"LOSS.deepclusterv2_loss.num_train_samples={configured} but the training "
                             f"set has {size} samples; set it to {size} or -1")
        if self.loss.num_train_samples not in (0, size):
            if bool(self.loss.memory_filled.any()):
                raise ValueError(f"the checkpoint's memory bank has {self.loss.num_train_samples} rows "
                                 f"but the training set has {size} samples; resume with the same data")
        if self.loss.num_train_samples != size:
            self.loss.allocate(size)
        if not bool(self.loss.memory_filled.any()):
            self.fill_memory(task)

    def on_phase_start(self, task: Any) -> None:
        """k-means for this epoch, unless the restored state already clustered it."""
        if int(self.loss.clustered_phase) == task.phase_idx:
            return
        start = time.perf_counter()
        stats = self.loss.cluster(seed=int(self.cfg.SEED_VALUE), phase=task.phase_idx)
        log.info("deepclusterv2: k-means (K=%s, %d iterations) on %d samples in %.1fs; %d empty "
                 "clusters", self.loss.num_clusters, self.loss.kmeans_iters, stats["rows"],
                 time.perf_counter() - start, stats["empty_clusters"])
