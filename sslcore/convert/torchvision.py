"""Convert ResNe(X)t trunks between sslcore/VISSL checkpoints and torchvision's ``ResNet``.

sslcore's ``resnet`` trunk (:class:`sslcore.models.trunks.resnet.ResNeXt`) holds torchvision's own
``BasicBlock``/``Bottleneck`` stages under ``_feature_blocks`` with torchvision's names, so the key
mapping is a prefix::

    trunk._feature_blocks.conv1.weight          <->  conv1.weight
    trunk._feature_blocks.bn1.running_mean      <->  bn1.running_mean
    trunk._feature_blocks.layer3.1.conv2.weight <->  layer3.1.conv2.weight

torchvision's classifier ``fc.*`` has no trunk counterpart: it is dropped going to sslcore and not
produced going to torchvision (load with ``strict=False`` or keep the model's own ``fc``).

Thin trunks (``WIDTH_MULTIPLIER`` != 1) and the CIFAR-style ``small`` stem have no torchvision
constructor; :func:`build_torchvision_resnet` rebuilds the layers of a real ``torchvision.models.ResNet``
with those widths, so torchvision's detection code (``IntermediateLayerGetter``,
``BackboneWithFPN``) works on it unchanged.

Papers: ResNet, He et al. 2015, https://arxiv.org/abs/1512.03385; ResNeXt, Xie et al. 2016,
https://arxiv.org/abs/1611.05431.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
from torch import nn
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock, Bottleneck

from sslcore.convert.vissl_state import BLOCKS_PREFIX, extract_trunk_state, wrap_trunk_state
from sslcore.models.trunks.resnet import _DEPTHS, make_norm_layer

log = logging.getLogger(__name__)

TRUNK_MODULES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


def _as_tensor(value: Any) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value


def convert_vissl_to_torchvision(state: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Map an sslcore/VISSL ResNe(X)t trunk to torchvision ``ResNet`` key names.

    Args:
        state: a whole checkpoint (``classy_state_dict -> base_model -> model -> trunk``), a model
            state dict with ``trunk.*`` keys, or a trunk state dict (see
            :func:`sslcore.convert.vissl_state.extract_trunk_state`).

    Returns:
        ``{torchvision key: tensor}``: ``conv1.weight``, ``bn1.*``, ``layer{1-4}.{j}.*`` (no ``fc``);
        tensors are the source's (not copied). ``model.load_state_dict(sd, strict=False)`` into
        :func:`build_torchvision_resnet` of the same settings then reports only ``fc.*`` missing.

    Raises:
        ValueError: if the state holds no ResNet trunk (no ``conv1.weight``); the message lists the
            first keys found.

    Example:
        >>> from sslcore.models.trunks.resnet import ResNeXt
        >>> trunk = ResNeXt(depth=18, width_multiplier=0.125, stem="small")
        >>> tv = build_torchvision_resnet(depth=18, width_multiplier=0.125, stem="small")
        >>> sd = convert_vissl_to_torchvision(trunk.state_dict())
        >>> tv.load_state_dict({**tv.state_dict(), **sd})
        <All keys matched successfully>
    """
    trunk = extract_trunk_state(state)
    converted: Dict[str, torch.Tensor] = {}
    for key, value in trunk.items():
        name = key[len(BLOCKS_PREFIX):] if key.startswith(BLOCKS_PREFIX) else key
        if name.startswith(TRUNK_MODULES):
            converted[name] = _as_tensor(value)
    if "conv1.weight" not in converted:
        raise ValueError("no ResNet trunk found (expected a key '_feature_blocks.conv1.weight'); "
                         f"first keys: {list(trunk)[:5]}. Is MODEL.TRUNK.NAME 'resnet'?")
    return converted


def convert_torchvision_to_vissl(state: Mapping[str, Any], *,
                                 config: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Map a torchvision (or timm) ``ResNet`` state dict to an sslcore/VISSL checkpoint.

    Args:
        state: ``ResNet.state_dict()`` (keys ``conv1.weight``, ``layer1.0.conv1.weight``, ...,
            ``fc.*``), optionally with ``module.`` prefixes or wrapped in ``{"state_dict": ...}``
            / ``{"model": ...}``. timm's plain ``resnet*``/``resnext*`` use the same names.
        config: config tree saved in the checkpoint; by default
            ``{"MODEL": {"TRUNK": {"NAME": "resnet", "RESNETS": <settings inferred from the shapes>}}}``.

    Returns:
        A checkpoint (see :func:`sslcore.convert.vissl_state.wrap_trunk_state`) whose trunk keys
        are ``_feature_blocks.<torchvision key>``; ``fc.*`` is dropped.

    Raises:
        ValueError: if a key is neither a trunk key nor ``fc.*`` (e.g. a deep-stem timm ResNet),
            or the state holds no ``conv1.weight``.
    """
    for wrapper in ("state_dict", "model"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    flat = extract_trunk_state(state)  # strips module./_orig_mod.
    trunk: Dict[str, torch.Tensor] = {}
    dropped = []
    for key, value in flat.items():
        if key.startswith(TRUNK_MODULES):
            trunk[BLOCKS_PREFIX + key] = _as_tensor(value)
        elif key.startswith("fc."):
            dropped.append(key)
        else:
            raise ValueError(f"'{key}' is not a torchvision ResNet trunk key (expected conv1, bn1, "
                             "layer1-4 or fc); deep-stem or other variants are not supported")
    if BLOCKS_PREFIX + "conv1.weight" not in trunk:
        raise ValueError(f"no 'conv1.weight' in the torchvision state; first keys: {list(flat)[:5]}")
    if dropped:
        log.info("dropped the classifier keys %s (no trunk counterpart)", dropped)
    if config is None:
        settings = _config_keys(infer_trunk_settings(trunk))
        config = {"MODEL": {"TRUNK": {"NAME": "resnet", "RESNETS": settings}}}
    return wrap_trunk_state(trunk, config=config)


def _config_keys(settings: Mapping[str, Any]) -> Dict[str, Any]:
    return {key.upper(): value for key, value in settings.items()}


def infer_trunk_settings(state: Mapping[str, Any]) -> Dict[str, Any]:
    """Read depth, width, ResNeXt grouping, stem and norm off the weight shapes of a ResNe(X)t trunk.

    Args:
        state: anything :func:`convert_vissl_to_torchvision` accepts.

    Returns:
        Keyword arguments of :func:`build_torchvision_resnet` (``depth``, ``width_multiplier``,
        ``groups``, ``width_per_group``, ``stem``, ``norm``).

    Raises:
        ValueError: if the block counts match no supported depth, or the norm layers keep no
            running statistics (GroupNorm/LayerNorm cannot be told apart from weights: use the
            checkpoint's saved config).
    """
    sd = convert_vissl_to_torchvision(state)
    base, _, kernel, _ = sd["conv1.weight"].shape
    bottleneck = "layer1.0.conv3.weight" in sd
    counts = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    depth = next((d for d, (block, layers) in _DEPTHS.items()
                  if layers == counts and (block is Bottleneck) == bottleneck), None)
    if depth is None:
        raise ValueError(f"blocks per stage {counts} (bottleneck={bottleneck}) match no supported "
                         f"depth {sorted(_DEPTHS)}")
    if "bn1.running_mean" not in sd:
        raise ValueError("the trunk has no BatchNorm statistics, so its norm cannot be inferred; "
                         "convert from a checkpoint that holds its config (MODEL.TRUNK.RESNETS.NORM)")
    groups, width_per_group = 1, 64
    if bottleneck:
        width, in_per_group = sd["layer1.0.conv2.weight"].shape[:2]
        groups = int(width // in_per_group)
        width_per_group = int(round(width / groups * 64 / base))
    return {"depth": depth, "width_multiplier": base / 64, "groups": groups,
            "width_per_group": width_per_group, "stem": "standard" if kernel == 7 else "small",
            "norm": "BatchNorm"}


def trunk_settings_from_checkpoint(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """The ResNe(X)t settings of a checkpoint, from its saved config, else from its weight shapes.

    Args:
        checkpoint: a loaded sslcore/VISSL checkpoint (``torch.load(..., weights_only=True)``); its
            ``config["MODEL"]["TRUNK"]`` is read when present, otherwise :func:`infer_trunk_settings`.

    Returns:
        Keyword arguments of :func:`build_torchvision_resnet`: ``depth``, ``width_multiplier``,
        ``groups``, ``width_per_group``, ``stem``, ``norm``, plus ``groupnorm_groups`` from a config.

    Raises:
        ValueError: if the saved ``MODEL.TRUNK.NAME`` is not ``resnet``, or as
            :func:`infer_trunk_settings`.

    Example:
        >>> ckpt = torch.load("model_final_checkpoint_phase9.torch", weights_only=True)  # doctest: +SKIP
        >>> model = build_torchvision_resnet(**trunk_settings_from_checkpoint(ckpt))  # doctest: +SKIP
    """
    trunk_cfg = ((checkpoint.get("config") or {}).get("MODEL") or {}).get("TRUNK")
    if not trunk_cfg:
        return infer_trunk_settings(checkpoint)
    name = trunk_cfg.get("NAME", "resnet")
    if name != "resnet":
        raise ValueError(f"config.MODEL.TRUNK.NAME is {name!r}; only 'resnet' (ResNe(X)t) trunks "
                         "convert to torchvision ResNet")
    r = trunk_cfg.get("RESNETS") or {}
    return {"depth": int(r.get("DEPTH", 50)), "width_multiplier": float(r.get("WIDTH_MULTIPLIER", 1.0)),
            "groups": int(r.get("GROUPS", 1)), "width_per_group": int(r.get("WIDTH_PER_GROUP", 64)),
            "stem": str(r.get("STEM", "standard")), "norm": str(r.get("NORM", "BatchNorm")),
            "groupnorm_groups": int(r.get("GROUPNORM_GROUPS", 32))}


def build_torchvision_resnet(*, depth: int = 50, width_multiplier: float = 1.0, groups: int = 1,
                             width_per_group: int = 64, stem: str = "standard", num_classes: int = 1000,
                             norm: str = "BatchNorm", groupnorm_groups: int = 32) -> ResNet:
    """A ``torchvision.models.ResNet`` laid out like the sslcore ``resnet`` trunk of the same settings.

    At width multiplier 1 with the standard stem this is exactly torchvision's constructor
    (``resnet18/34/50/101``, ``resnext*`` via ``groups``/``width_per_group``). Otherwise ``conv1``,
    ``bn1``, ``maxpool`` (``nn.Identity`` for the small stem), ``layer1-4`` and ``fc`` are rebuilt
    with ``round(64 * width_multiplier) * 2**i`` planes through ``ResNet._make_layer``.
    Weights are freshly initialised (Kaiming normal, fan-out; norms at 1/0); load converted
    weights with :func:`convert_vissl_to_torchvision`.

    Args:
        depth: 18, 34, 50 or 101.
        width_multiplier: stage width multiplier (> 0), as ``MODEL.TRUNK.RESNETS.WIDTH_MULTIPLIER``.
        groups: ResNeXt cardinality.
        width_per_group: ResNeXt width per group.
        stem: ``"standard"`` (7x7/2 conv + 3x3/2 max-pool) or ``"small"`` (3x3/1 conv, no max-pool).
        num_classes: outputs of ``fc``.
        norm: ``"BatchNorm"``, ``"GroupNorm"`` or ``"LayerNorm"`` (as the trunk's NORM).
        groupnorm_groups: GroupNorm groups.

    Returns:
        A ``ResNet`` mapping (B, 3, H, W) float images to (B, num_classes) logits.

    Raises:
        ValueError: for an unsupported depth or stem, or a width multiplier below 1/64.

    Example:
        >>> model = build_torchvision_resnet(depth=18, width_multiplier=0.125, stem="small", num_classes=10)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    if depth not in _DEPTHS:
        raise ValueError(f"depth={depth} is not supported; use one of {sorted(_DEPTHS)}")
    if stem not in ("standard", "small"):
        raise ValueError(f"stem={stem!r}: use 'standard' or 'small'")
    base = int(round(64 * width_multiplier))
    if base < 1:
        raise ValueError(f"width_multiplier={width_multiplier} must be >= 1/64")
    block, layers = _DEPTHS[depth]
    norm_layer = nn.BatchNorm2d if norm == "BatchNorm" else make_norm_layer(norm, groupnorm_groups)
    model = ResNet(block, list(layers), num_classes=num_classes, groups=groups,
                   width_per_group=width_per_group, norm_layer=norm_layer)
    if base == 64 and stem == "standard":
        return model
    _rebuild_layers(model, block, layers, base, stem, num_classes)
    return model


def _rebuild_layers(model: ResNet, block: Any, layers: Any, base: int, stem: str, num_classes: int) -> None:
    """Replace the stem, stages and classifier of ``model`` by ones ``base`` channels wide."""
    if stem == "standard":
        model.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        model.conv1 = nn.Conv2d(3, base, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    model.bn1 = model._norm_layer(base)
    model.inplanes = base
    model.layer1 = model._make_layer(block, base, layers[0])
    model.layer2 = model._make_layer(block, base * 2, layers[1], stride=2)
    model.layer3 = model._make_layer(block, base * 4, layers[2], stride=2)
    model.layer4 = model._make_layer(block, base * 8, layers[3], stride=2)
    model.fc = nn.Linear(base * 8 * block.expansion, num_classes)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
