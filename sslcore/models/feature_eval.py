"""Feature-evaluation settings: which trunk features a frozen-trunk benchmark reads, and how pooled.

``MODEL.FEATURE_EVAL_SETTINGS.LINEAR_EVAL_FEAT_POOL_OPS_MAP`` is VISSL's list of
``[feature_name, [torch.nn op name, [op args]]]``, e.g.::

    [["res5avg", ["Identity", []]], ["res4", ["AdaptiveAvgPool2d", [[2, 2]]]]]

Each named trunk feature is pooled by ``torch.nn.<op>(*args)`` and, with ``SHOULD_FLATTEN_FEATS``,
flattened to (B, D). Linear probes then put one ``eval_mlp`` head on each feature.

Protocol: [0] Goyal et al. 2019, https://arxiv.org/abs/1905.01235 (linear probes on several layers).
"""

from __future__ import annotations

from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare

_MAP_KEY = "config.MODEL.FEATURE_EVAL_SETTINGS.LINEAR_EVAL_FEAT_POOL_OPS_MAP"

declare("MODEL.FEATURE_EVAL_SETTINGS", {
    "EVAL_MODE_ON": Key(False, bool, "the model is evaluated (linear probe, feature extraction, "
                        "fine-tuning) rather than pretrained"),
    "FREEZE_TRUNK_ONLY": Key(False, bool, "with EVAL_MODE_ON: freeze the trunk (no gradients, "
                             "norm layers in eval mode) and train the heads (linear probe)"),
    "FREEZE_TRUNK_AND_HEAD": Key(False, bool, "with EVAL_MODE_ON: freeze trunk and heads "
                                 "(evaluate a trained model as it is)"),
    "EVAL_TRUNK_AND_HEAD": Key(False, bool, "with EVAL_MODE_ON: run trunk and heads as in "
                               "pretraining (heads chained on the trunk's default output), e.g. "
                               "for fine-tuning; LINEAR_EVAL_FEAT_POOL_OPS_MAP is then not applied"),
    "EXTRACT_TRUNK_FEATURES_ONLY": Key(False, bool, "with EVAL_MODE_ON: build no heads; the model "
                                       "returns the pooled trunk features (frozen trunk)"),
    "SHOULD_FLATTEN_FEATS": Key(True, bool, "flatten each pooled trunk feature to (B, D)"),
    "LINEAR_EVAL_FEAT_POOL_OPS_MAP": Key(
        [["res5avg", ["Identity", []]]], list,
        "trunk features for evaluation and their pooling: a list of "
        "[feature_name, [torch.nn op, [args]]], e.g. [[\"res4\", [\"AdaptiveAvgPool2d\", [[2, 2]]]]]; "
        "[] means the default"),
})


def _as_tuples(value: Any) -> Any:
    """Turn nested lists into tuples (pooling ops want tuples for sizes)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def build_feature_pool_ops(pool_ops_map: Sequence[Any], valid_features: Sequence[str]) -> nn.ModuleDict:
    """Turn ``LINEAR_EVAL_FEAT_POOL_OPS_MAP`` into an ordered ``{feature_name: pooling module}``.

    Args:
        pool_ops_map: VISSL's list ``[[feature_name, [op_name, [args]]], ...]`` (a list or an
            OmegaConf ListConfig); ``op_name`` is any parameter-free ``torch.nn`` module such as
            ``Identity``, ``AdaptiveAvgPool2d``, ``AvgPool2d``, ``MaxPool2d``.
        valid_features: the trunk's feature names (``trunk.feature_names``).

    Returns:
        ``nn.ModuleDict`` in the map's order; each module maps a trunk feature (B, C, H, W) to its
        pooled form (B, C, H', W').

    Raises:
        ValueError: for a malformed entry, an unknown feature, a repeated feature, an unknown
            op, an op with learnable parameters or args the op rejects; the message names the
            entry, e.g. ``...LINEAR_EVAL_FEAT_POOL_OPS_MAP[1]``.

    Example:
        >>> ops = build_feature_pool_ops([["res4", ["AdaptiveAvgPool2d", [[2, 2]]]]],
        ...                              ["res4", "res5"])
        >>> ops["res4"]
        AdaptiveAvgPool2d(output_size=(2, 2))
    """
    if isinstance(pool_ops_map, (ListConfig, DictConfig)):
        pool_ops_map = OmegaConf.to_container(pool_ops_map, resolve=True)
    ops = nn.ModuleDict()
    for index, entry in enumerate(pool_ops_map):
        where = f"{_MAP_KEY}[{index}] = {entry!r}"
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], (list, tuple)) and len(entry[1]) == 2
                and isinstance(entry[1][0], str) and isinstance(entry[1][1], (list, tuple))):
            raise ValueError(f"{where}: each entry is written [feature, [op, [args]]], e.g. "
                             '["res5avg", ["Identity", []]]')
        name, (op_name, args) = entry
        if name not in valid_features:
            raise ValueError(f"{where}: the trunk has no feature {name!r}; valid: {list(valid_features)}")
        if name in ops:
            raise ValueError(f"{where}: feature {name!r} is listed twice; list each feature once")
        op_cls = getattr(nn, op_name, None)
        if not (isinstance(op_cls, type) and issubclass(op_cls, nn.Module)):
            raise ValueError(f"{where}: torch.nn has no module {op_name!r}; use e.g. Identity, "
                             "AdaptiveAvgPool2d, AvgPool2d, MaxPool2d")
        try:
            op = op_cls(*_as_tuples(list(args)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: torch.nn.{op_name} rejects args {args}: {exc}") from None
        if any(True for _ in op.parameters()):
            raise ValueError(f"{where}: torch.nn.{op_name} has learnable parameters; pooling ops "
                             "must be parameter-free (put learnable layers in a head)")
        ops[name] = op
    return ops
