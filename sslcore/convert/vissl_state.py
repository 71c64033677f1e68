"""The VISSL/sslcore checkpoint container: find the trunk inside it, and build one around a trunk.

A VISSL (and sslcore, design.md section 5) checkpoint nests the trunk's state dict as
``checkpoint["classy_state_dict"]["base_model"]["model"]["trunk"]``, with keys such as
``_feature_blocks.conv1.weight``; the heads sit next to it under ``"heads"``. A flat model state dict
(``nn.Module.state_dict()`` of an sslcore model) prefixes the same keys with ``trunk.`` and
``heads.``. The converters accept any of these three shapes.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

TRUNK_PREFIX = "trunk."
BLOCKS_PREFIX = "_feature_blocks."
# common wrappers around a flat state dict: DataParallel / DDP and torch.compile
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def extract_trunk_state(state: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Return the trunk's state dict (keys ``_feature_blocks.*`` or the trunk's own names).

    Args:
        state: one of
            - a whole VISSL/sslcore checkpoint (``classy_state_dict -> base_model -> model -> trunk``);
            - a ``{"model": {"trunk": ..., "heads": ...}}`` ``base_model`` entry;
            - ``{"model_state_dict": ...}``, as VISSL's conversion scripts write;
            - a flat model state dict with ``trunk.*`` (and ``heads.*``) keys, possibly wrapped in
              ``module.`` (DistributedDataParallel);
            - a trunk state dict (returned as it is).

    Returns:
        ``{key: tensor}`` with the ``trunk.`` prefix removed; insertion order kept.

    Raises:
        ValueError: if ``state`` is not a mapping, or a checkpoint lacks the trunk entry.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a checkpoint or state dict (a mapping), got {type(state).__name__}")
    if "classy_state_dict" in state:
        classy = state["classy_state_dict"]
        if not isinstance(classy, Mapping) or "base_model" not in classy:
            raise ValueError("checkpoint['classy_state_dict'] has no 'base_model' entry: this is not "
                             "a VISSL/sslcore checkpoint; pass the model or trunk state dict instead")
        state = classy["base_model"]
    elif isinstance(state.get("model_state_dict"), Mapping):  # VISSL's extra_scripts outputs
        state = state["model_state_dict"]
    if "model" in state and isinstance(state["model"], Mapping) and "trunk" in state["model"]:
        return dict(state["model"]["trunk"])
    flat = {_strip_wrappers(k): v for k, v in state.items()}
    if any(k.startswith(TRUNK_PREFIX) for k in flat):
        return {k[len(TRUNK_PREFIX):]: v for k, v in flat.items() if k.startswith(TRUNK_PREFIX)}
    return flat


def _strip_wrappers(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def wrap_trunk_state(trunk: Mapping[str, torch.Tensor], *, heads: Optional[Mapping[str, Any]] = None,
                     config: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Build a VISSL/sslcore checkpoint holding only model weights.

    The result loads through ``MODEL.WEIGHTS_INIT`` (``STATE_DICT_KEY_NAME: classy_state_dict``),
    :func:`extract_trunk_state`, and VISSL's own weight init.

    Args:
        trunk: trunk state dict (keys ``_feature_blocks.*`` for the ResNe(X)t and AlexNet trunks).
        heads: head state dict (keys ``<i>.*``), empty when None.
        config: a config tree saved under ``"config"`` (e.g. ``{"MODEL": {"TRUNK": ...}}``) so
            readers can rebuild the trunk; omitted when None.

    Returns:
        ``{"type": "consolidated", "classy_state_dict": {"base_model": {"model": {"trunk",
        "heads"}, "meta": {}}}[, "config": config]}``.
    """
    checkpoint: Dict[str, Any] = {
        "type": "consolidated",
        "classy_state_dict": {
            "base_model": {"model": {"trunk": dict(trunk), "heads": dict(heads or {})}, "meta": {}},
        },
    }
    if config is not None:
        checkpoint["config"] = dict(config)
    return checkpoint
