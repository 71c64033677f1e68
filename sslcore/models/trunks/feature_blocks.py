"""Running a trunk made of named feature blocks only as deep as the deepest requested feature.

VISSL trunks keep their layers in ``_feature_blocks`` and name the output of each block (``conv1``,
``res2``, ``pool5``, ``flatten``...). :func:`forward_feature_blocks` is the forward pass these
trunks share: run the blocks in order, keep the requested outputs, stop after the deepest one.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn


def check_feature_names(names: Sequence[str], valid: Sequence[str], who: str) -> None:
    """Raise if a requested feature name is not one of ``valid``.

    Args:
        names: the requested feature names.
        valid: the trunk's feature names.
        who: the trunk's name, used in the message.

    Raises:
        ValueError: naming the unknown features and listing the valid ones.
    """
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"{who}: unknown trunk feature(s) {unknown}; valid feature names are "
                         f"{list(valid)}")


def forward_feature_blocks(x: torch.Tensor, blocks: Sequence[nn.Module], block_names: Sequence[str],
                           out_feat_keys: Optional[Sequence[str]], *, default: str,
                           who: str) -> List[torch.Tensor]:
    """Run ``blocks`` in order and return the outputs named by ``out_feat_keys``.

    Args:
        x: the trunk's input, e.g. (B, C, H, W) images.
        blocks: the feature blocks, shallowest first.
        block_names: the feature name of each block's output (same length as ``blocks``).
        out_feat_keys: requested names, in the order wanted (repeats allowed); None or empty
            means ``[default]``.
        default: the feature returned when nothing is requested.
        who: the trunk's name, used in error messages.

    Returns:
        One tensor per requested name. Blocks after the deepest requested one do not run.

    Raises:
        ValueError: if a requested name is not in ``block_names``.
    """
    names = list(out_feat_keys) if out_feat_keys else [default]
    check_feature_names(names, block_names, who)
    order = {name: i for i, name in enumerate(block_names)}
    deepest = max(order[n] for n in names)
    wanted = set(names)
    found: Dict[str, torch.Tensor] = {}
    for index, (name, block) in enumerate(zip(block_names, blocks)):
        x = block(x)
        if name in wanted:
            found[name] = x
        if index == deepest:
            break
    return [found[n] for n in names]
