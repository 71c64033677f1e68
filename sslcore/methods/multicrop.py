"""Multi-crop plumbing shared by SwAV, SwAV-momentum, DeepCluster-v2 and multi-crop SimCLR.

``multicrop_collator`` hands the method one tensor per resolution, each crop-major
(``(V_r*B, C, H_r, W_r)``). The model is run once per step (DDP needs a single forward): the list
goes to :class:`~sslcore.models.model.BaseSSLMultiInputOutputModel`, which runs the trunk once per
run of equal-size inputs and the heads once on all crops together (SwAV's multi-resolution
forward). Outputs come back crop-major over all V crops.

- [0] SwAV multi-crop, Caron et al. 2020, https://arxiv.org/abs/2006.09882 (Sec. 3.2)
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import torch
from torch import nn


def count_crops(transforms: Sequence[Mapping[str, Any]]) -> int:
    """Crops (views) per image made by a TRANSFORMS list.

    ``ImgPilToMultiCrop`` gives ``total_num_crops`` (VISSL's older spelling ``total_nmb_crops``
    too), ``ImgReplicatePil`` gives ``num_times``; without either, 1.

    Args:
        transforms: ``DATA.TRAIN.TRANSFORMS`` entries.

    Returns:
        V >= 1.
    """
    for t in transforms:
        if t.get("name") == "ImgPilToMultiCrop":
            total = t.get("total_num_crops", t.get("total_nmb_crops"))
            return int(total if total is not None else sum(t.get("num_crops", [])))
        if t.get("name") == "ImgReplicatePil":
            return int(t.get("num_times", 2))
    return 1


def split_crops(data: Sequence[torch.Tensor], num_crops: int) -> List[torch.Tensor]:
    """Cut the collator's per-resolution tensors into one tensor per crop.

    Args:
        data: tensors (V_r*B, C, H_r, W_r), crop-major, together holding V crops of B images.
        num_crops: V.

    Returns:
        V tensors (B, C, H_c, W_c), crop order.

    Raises:
        ValueError: if the rows do not split into V crops of B images.
    """
    rows = sum(int(t.shape[0]) for t in data)
    if num_crops < 1 or rows % num_crops or any(int(t.shape[0]) % (rows // num_crops or 1) for t in data):
        raise ValueError(
            f"the batch holds {[tuple(t.shape) for t in data]}: it cannot be cut into num_crops="
            f"{num_crops} crops of equal batch size; check the crop count the config infers from "
            "DATA.TRAIN.TRANSFORMS and use COLLATE_FUNCTION: multicrop_collator"
        )
    batch = rows // num_crops
    return [crop for t in data for crop in t.split(batch)]


def flatten_outputs(outputs: Sequence[Any]) -> List[torch.Tensor]:
    """Flatten a model's outputs: a head that returns a list (swav_head) contributes its items.

    Args:
        outputs: the model's list of head-chain outputs (tensors or lists of tensors).

    Returns:
        A flat list of tensors, e.g. ``[embedding, scores_0, ...]``.
    """
    flat: List[torch.Tensor] = []
    for out in outputs:
        flat += list(out) if isinstance(out, (list, tuple)) else [out]
    return flat


def forward_crops(model: nn.Module, crops: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Run ``model`` once on crops of one or several resolutions.

    Consecutive inputs of equal size are concatenated and go through the trunk together; the
    heads see every crop at once (one forward call, as DDP requires).

    Args:
        model: the (possibly DDP-wrapped) model, or a momentum copy of it.
        crops: tensors (N_i, C, H_i, W_i), in crop order.

    Returns:
        Flat outputs (see :func:`flatten_outputs`), rows crop-major over all inputs.

    Raises:
        ValueError: if ``crops`` is empty.
    """
    if not crops:
        raise ValueError("forward_crops needs at least one crop tensor")
    groups: List[List[torch.Tensor]] = []
    for crop in crops:
        if groups and groups[-1][0].shape[1:] == crop.shape[1:]:
            groups[-1].append(crop)
        else:
            groups.append([crop])
    merged = [torch.cat(g) if len(g) > 1 else g[0] for g in groups]
    return flatten_outputs(model(merged if len(merged) > 1 else merged[0]))


def batch_size_of(batch: Dict[str, Any], num_crops: int) -> int:
    """B, images per rank in a multi-crop batch (rows of all crops / V)."""
    return sum(int(t.shape[0]) for t in batch["data"]) // num_crops
