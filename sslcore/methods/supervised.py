"""Label-driven training: the model's outputs are trained against ``batch["label"]``.

One method serves every recipe whose loss is a cross-entropy on labels, whatever made them:

- supervised pretraining: the dataset's class labels (``LABEL_TYPE: standard``);
- RotNet [0]: rotation ids written by ``ImgRotatePil`` (:mod:`sslcore.methods.rotnet`);
- Jigsaw [1]: permutation ids written by a patch-shuffling transform;
- ClusterFit [2]: k-means cluster ids read from a labels ``.npy`` (:mod:`sslcore.engine.clusterfit`);
- linear probes: several evaluated features, one head and one cross-entropy each (summed).

Registered under VISSL's loss names ``CrossEntropyLoss`` and
``cross_entropy_multiple_output_single_target``. No state beyond the weights.

Papers:
    - [0] RotNet, Gidaris et al. 2018, https://arxiv.org/abs/1803.07728
    - [1] Jigsaw, Noroozi & Favaro 2016, https://arxiv.org/abs/1603.09246
    - [2] ClusterFit, Yan et al. 2020, https://arxiv.org/abs/1912.03330
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from omegaconf import DictConfig

from sslcore.methods.base import SSLMethod, register_method
from sslcore.methods.rotnet import check_rotation_config


@register_method
class Supervised(SSLMethod):
    """Forward every view, one cross-entropy per model output against ``batch["label"]``.

    Rows of the outputs must line up with ``batch["label"]``: one view per sample with
    ``default_collate``, or all views in one view-major tensor (``simclr_collator``,
    ``multicrop_collator``), whose labels follow the same rows.

    With several processes each rank averages over its own rows and DDP averages the gradients,
    which equals one process on the global batch when every rank keeps the same number of rows
    (no ``ignore_index`` labels, equal local batches: ``DROP_LAST: true``).
    """

    loss_names = ("CrossEntropyLoss", "cross_entropy_multiple_output_single_target")

    @classmethod
    def infer_config(cls, cfg: DictConfig, *, world_size: int) -> Dict[str, Any]:
        """Nothing to derive; checks RotNet settings (:func:`~sslcore.methods.rotnet.check_rotation_config`).

        Raises:
            ValueError: an ImgRotatePil setup that cannot train (see the RotNet rule).
        """
        check_rotation_config(cfg)
        return {}

    def forward(self, task: Any, batch: Dict[str, Any]) -> List[torch.Tensor]:
        """Run the model on ``batch["data"]``: one tensor as it is, several as a view list.

        Returns:
            The model's outputs, each (N, K) with N the rows of all views together.
        """
        data = batch["data"]
        return self.model(data[0] if len(data) == 1 else list(data))

    def compute_loss(self, task: Any, outputs: List[torch.Tensor],
                     batch: Dict[str, Any]) -> torch.Tensor:
        """The configured cross-entropy of ``outputs`` against ``batch["label"]``.

        Raises:
            ValueError: output rows that do not match the labels (several views collated by
                ``default_collate``, which keeps one label per sample).
        """
        target = batch["label"]
        rows = {int(out.shape[0]) for out in outputs}
        if rows != {int(target.shape[0])}:
            raise ValueError(
                f"the model gave {sorted(rows)} output rows for {int(target.shape[0])} labels from "
                f"{len(batch['data'])} view tensor(s). default_collate keeps one label per sample "
                "(view 0's) while every view is forwarded; for several views per sample set "
                "config.DATA.TRAIN.COLLATE_FUNCTION=simclr_collator (one row and label per view)")
        return self.loss(outputs, target)
