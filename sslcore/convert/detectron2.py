"""Convert an sslcore/VISSL ResNe(X)t trunk to a detectron2 backbone checkpoint (``.pkl``).

detectron2's ``ResNet`` backbone names (``detectron2/modeling/backbone/resnet.py``; the norm of a
conv lives inside it as ``.norm``)::

    sslcore trunk key                       detectron2 key
    _feature_blocks.conv1.weight            stem.conv1.weight
    _feature_blocks.bn1.<p>                 stem.conv1.norm.<p>
    _feature_blocks.layer<N>.<j>.conv<k>.weight        res<N+1>.<j>.conv<k>.weight
    _feature_blocks.layer<N>.<j>.bn<k>.<p>             res<N+1>.<j>.conv<k>.norm.<p>
    _feature_blocks.layer<N>.<j>.downsample.0.weight   res<N+1>.<j>.shortcut.weight
    _feature_blocks.layer<N>.<j>.downsample.1.<p>      res<N+1>.<j>.shortcut.norm.<p>

with ``<p>`` in weight, bias, running_mean, running_var (``num_batches_tracked`` is dropped). The
file is a pickle of ``{"model": {key: numpy array}, "__author__": "sslcore",
"matching_heuristics": True}``, the layout detectron2's own torchvision converter writes and its
``DetectionCheckpointer`` reads. sslcore's blocks stride in the 3x3 conv (torchvision style), so
set ``MODEL.RESNETS.STRIDE_IN_1X1: False`` in detectron2; :func:`detectron2_resnet_config` gives
the matching ``MODEL.RESNETS`` keys. Heads are not converted.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Union

from sslcore.convert.torchvision import convert_vissl_to_torchvision

_LAYER = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_BN = re.compile(r"^bn([1-3])\.(.+)$")


def _detectron2_name(tv_key: str) -> str:
    """Map one torchvision-named trunk key to detectron2's name."""
    if tv_key.startswith("conv1."):
        return "stem." + tv_key
    if tv_key.startswith("bn1."):
        return "stem.conv1.norm." + tv_key[len("bn1."):]
    match = _LAYER.match(tv_key)
    if match is None:
        raise ValueError(f"'{tv_key}' is not a ResNet trunk key")
    stage, block, rest = match.groups()
    prefix = f"res{int(stage) + 1}.{block}."
    bn = _BN.match(rest)
    if bn is not None:
        return f"{prefix}conv{bn.group(1)}.norm.{bn.group(2)}"
    if rest.startswith("downsample.0."):
        return prefix + "shortcut." + rest[len("downsample.0."):]
    if rest.startswith("downsample.1."):
        return prefix + "shortcut.norm." + rest[len("downsample.1."):]
    return prefix + rest  # conv<k>.weight


def convert_vissl_to_detectron2(state: Mapping[str, Any]) -> Dict[str, Any]:
    """Rename an sslcore/VISSL ResNe(X)t trunk to detectron2's backbone keys, as numpy arrays.

    Args:
        state: a whole checkpoint, a model state dict with ``trunk.*`` keys, or a trunk state dict
            (see :func:`sslcore.convert.vissl_state.extract_trunk_state`); BatchNorm trunks.

    Returns:
        ``{"model": {detectron2 key: np.ndarray (float32, the source's shape)},
        "__author__": "sslcore", "matching_heuristics": True}``; write it with
        :func:`save_detectron2_checkpoint`.

    Raises:
        ValueError: if the state holds no ResNet trunk, or its stem is the 3x3 ``small`` one
            (detectron2's ``BasicStem`` is a 7x7 stride-2 conv with max-pool).

    Example:
        >>> from sslcore.models.trunks.resnet import ResNeXt
        >>> d2 = convert_vissl_to_detectron2(ResNeXt(depth=18, width_multiplier=0.125).state_dict())
        >>> d2["model"]["res2.0.conv1.norm.running_mean"].shape
        (8,)
    """
    tv = convert_vissl_to_torchvision(state)
    if tv["conv1.weight"].shape[-1] != 7:
        raise ValueError("the trunk has the 3x3 'small' stem (MODEL.TRUNK.RESNETS.STEM=small); "
                         "detectron2's BasicStem is a 7x7 conv, so convert a 'standard'-stem trunk")
    model = {_detectron2_name(key): value.detach().cpu().numpy().copy()
             for key, value in tv.items() if not key.endswith("num_batches_tracked")}
    return {"model": model, "__author__": "sslcore", "matching_heuristics": True}


def detectron2_resnet_config(*, depth: int, width_multiplier: float = 1.0, groups: int = 1,
                             width_per_group: int = 64, **_: Any) -> Dict[str, Any]:
    """detectron2 ``MODEL.RESNETS`` keys that build the backbone matching a converted trunk.

    Args:
        depth, width_multiplier, groups, width_per_group: the trunk settings
            (:func:`sslcore.convert.torchvision.trunk_settings_from_checkpoint`); other keys ignored.

    Returns:
        ``{"DEPTH", "STEM_OUT_CHANNELS", "RES2_OUT_CHANNELS", "NUM_GROUPS", "WIDTH_PER_GROUP",
        "STRIDE_IN_1X1": False}``. detectron2's bottleneck width at res2 is
        NUM_GROUPS * WIDTH_PER_GROUP; sslcore's is ``int(base * width_per_group / 64) * groups``
        with ``base = round(64 * width_multiplier)``, hence WIDTH_PER_GROUP below.
    """
    base = int(round(64 * width_multiplier))
    expansion = 4 if depth >= 50 else 1
    return {"DEPTH": depth, "STEM_OUT_CHANNELS": base, "RES2_OUT_CHANNELS": base * expansion,
            "NUM_GROUPS": groups, "WIDTH_PER_GROUP": int(base * width_per_group / 64),
            "STRIDE_IN_1X1": False}


def save_detectron2_checkpoint(converted: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """Pickle a :func:`convert_vissl_to_detectron2` result to ``path`` (a ``.pkl`` file).

    Args:
        converted: ``{"model": {key: np.ndarray}, "__author__", "matching_heuristics"}``.
        path: output file; parent directories are created.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(dict(converted), handle, protocol=pickle.HIGHEST_PROTOCOL)
    return path

