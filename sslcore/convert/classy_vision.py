"""Convert ResNe(X)t trunks between sslcore/VISSL and ClassyVision's ``resnext`` model.

ClassyVision's ``ResNeXt`` (``classy_vision/models/resnext.py``) names a trunk::

    initial_block._module.0 / .1                 stem conv / its BatchNorm
    blocks.<i>.block<i>-<j>.convolutional_block  Sequential(conv, bn, relu, conv, bn, relu, conv)
                                                 (bottleneck) or (conv, bn, relu, conv) (basic)
    blocks.<i>.block<i>-<j>.bn                   the block's last BatchNorm (after the residual
                                                 branch's last conv)
    blocks.<i>.block<i>-<j>.downsample.0 / .1    shortcut conv / BatchNorm

so, with stage i = N - 1 for sslcore's ``layer<N>`` and ``B = blocks.<i>.block<i>-<j>``:

- ``conv1`` / ``bn1`` (stem) <-> ``initial_block._module.0`` / ``.1``;
- bottleneck: ``layer<N>.<j>.conv1, bn1, conv2, bn2, conv3`` <-> ``B.convolutional_block.0, 1, 3,
  4, 6``, and ``bn3`` <-> ``B.bn``;
- basic block: ``conv1, bn1, conv2`` <-> ``B.convolutional_block.0, 1, 3``, and ``bn2`` <-> ``B.bn``;
- ``layer<N>.<j>.downsample.0`` / ``.1`` <-> ``B.downsample.0`` / ``.1``.

This is the mapping VISSL's ``convert_vissl_to_classy_vision.py`` applies (bottlenecks only
there). ClassyVision stores a model as ``{"model": {"trunk": ..., "heads": ...}}``; the file written
here nests it as VISSL does, under ``classy_state_dict -> base_model``. Heads are not converted.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping

import torch

from sslcore.convert.torchvision import convert_vissl_to_torchvision
from sslcore.convert.vissl_state import BLOCKS_PREFIX, wrap_trunk_state

_TV_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_CLASSY_BLOCK = re.compile(r"^blocks\.(\d)\.block(\d)-(\d+)\.(.+)$")
_STEM = {"conv1.": "initial_block._module.0.", "bn1.": "initial_block._module.1."}
_BOTTLENECK = {"conv1.": "convolutional_block.0.", "bn1.": "convolutional_block.1.",
               "conv2.": "convolutional_block.3.", "bn2.": "convolutional_block.4.",
               "conv3.": "convolutional_block.6.", "bn3.": "bn.", "downsample.": "downsample."}
_BASIC = {"conv1.": "convolutional_block.0.", "bn1.": "convolutional_block.1.",
          "conv2.": "convolutional_block.3.", "bn2.": "bn.", "downsample.": "downsample."}


def _rename(rest: str, table: Mapping[str, str], where: str) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    raise ValueError(f"'{where}' has no counterpart in the other format")


def convert_vissl_to_classy_vision(state: Mapping[str, Any]) -> Dict[str, Any]:
    """Rename an sslcore/VISSL ResNe(X)t trunk to ClassyVision ``resnext`` keys.

    Args:
        state: a whole checkpoint, a model state dict with ``trunk.*`` keys, or a trunk state dict.

    Returns:
        ``{"classy_state_dict": {"base_model": {"model": {"trunk": {classy key: tensor},
        "heads": {}}}}}`` (VISSL's nesting of a ClassyVision model state).

    Raises:
        ValueError: if the state holds no ResNet trunk.

    Example:
        >>> from sslcore.models.trunks.resnet import ResNeXt
        >>> cv = convert_vissl_to_classy_vision(ResNeXt(depth=50, width_multiplier=0.125).state_dict())
        >>> trunk = cv["classy_state_dict"]["base_model"]["model"]["trunk"]
        >>> "blocks.0.block0-0.convolutional_block.6.weight" in trunk
        True
    """
    tv = convert_vissl_to_torchvision(state)
    table = _BOTTLENECK if "layer1.0.conv3.weight" in tv else _BASIC
    trunk: Dict[str, torch.Tensor] = {}
    for key, value in tv.items():
        match = _TV_BLOCK.match(key)
        if match is None:
            trunk[_rename(key, _STEM, key)] = value
            continue
        stage, block, rest = int(match.group(1)) - 1, match.group(2), match.group(3)
        trunk[f"blocks.{stage}.block{stage}-{block}.{_rename(rest, table, key)}"] = value
    return {"classy_state_dict": {"base_model": {"model": {"trunk": trunk, "heads": {}}}}}


def convert_classy_vision_to_vissl(state: Mapping[str, Any]) -> Dict[str, Any]:
    """Rename a ClassyVision ``resnext`` trunk to an sslcore/VISSL checkpoint.

    Args:
        state: ClassyVision keys (see the module docstring), as a flat state dict, a
            ``{"model": {"trunk": ...}}`` ClassyVision state, or VISSL's
            ``classy_state_dict -> base_model -> model -> trunk`` nesting. ``heads``/``fc``/``clf``
            entries are ignored.

    Returns:
        A checkpoint (:func:`sslcore.convert.vissl_state.wrap_trunk_state`) with
        ``_feature_blocks.*`` keys.

    Raises:
        ValueError: for a key that is not part of a ClassyVision ResNeXt trunk, or no stem conv.
    """
    if "classy_state_dict" in state:
        state = state["classy_state_dict"]["base_model"]
    if isinstance(state.get("model"), Mapping):
        state = state["model"].get("trunk", {})
    bottleneck = any(".convolutional_block.6." in key for key in state)
    table = {new: old for old, new in (_BOTTLENECK if bottleneck else _BASIC).items()}
    stem = {new: old for old, new in _STEM.items()}
    trunk: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(("heads.", "fc.", "clf.")):
            continue
        match = _CLASSY_BLOCK.match(key)
        if match is None:
            name = _rename(key, stem, key)
        else:
            stage, stage_again, block, rest = match.groups()
            if stage != stage_again:
                raise ValueError(f"'{key}': block name does not match its stage index")
            name = f"layer{int(stage) + 1}.{block}.{_rename(rest, table, key)}"
        trunk[BLOCKS_PREFIX + name] = value
    if BLOCKS_PREFIX + "conv1.weight" not in trunk:
        raise ValueError(f"no 'initial_block._module.0.weight' in the ClassyVision state; first keys "
                         f"{list(state)[:5]}")
    return wrap_trunk_state(trunk)
