"""The model: a trunk plus a list of heads, built from ``MODEL`` (VISSL's BaseSSLMultiInputOutputModel).

State-dict keys are ``trunk._feature_blocks.*`` and ``heads.<i>.*``, as in VISSL checkpoints.

Two ways to run, chosen by ``MODEL.FEATURE_EVAL_SETTINGS``:

- pretraining (``EVAL_MODE_ON: False``) or fine-tuning (``EVAL_TRUNK_AND_HEAD: True``): the heads
  of ``MODEL.HEAD.PARAMS`` are chained on the trunk's default output (VISSL's "Case 1");
- feature evaluation (``EVAL_MODE_ON: True``): the trunk returns the features named in
  ``LINEAR_EVAL_FEAT_POOL_OPS_MAP``, each pooled and flattened; each goes to its own head
  (one ``eval_mlp`` per feature), or is returned as it is with ``EXTRACT_TRUNK_FEATURES_ONLY``.

With ``MODEL.MULTI_INPUT_HEAD_MAPPING`` (PIRL), the forward pass also takes named inputs: each is
run through the trunk and its own head (:func:`parse_input_mapping`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.models.feature_eval import build_feature_pool_ops
from sslcore.models.heads import build_heads
from sslcore.models.trunks import build_trunk

log = logging.getLogger(__name__)

_DEFAULT_POOL_OPS_MAP = [["res5avg", ["Identity", []]]]

declare("MODEL", {
    "MULTI_INPUT_HEAD_MAPPING": Key([], list, "several named inputs (PIRL: patches and images), "
                                    "VISSL format: a list of [input_name, [trunk feature]] or "
                                    "[input_name, {feat_names: [...], head_index: i}]; entry i runs "
                                    "the trunk on that input and head i (or head_index) on its "
                                    "feature, one output per entry. [] = one input"),
})

# (input name, trunk feature names, head index), one per MULTI_INPUT_HEAD_MAPPING entry
InputMapping = List[Tuple[str, List[str], int]]


def parse_input_mapping(entries: Any, num_heads: int, feature_names: Sequence[str]) -> InputMapping:
    """Read ``MODEL.MULTI_INPUT_HEAD_MAPPING`` (VISSL semantics).

    Entry i maps an input name to the trunk features it is read at and to a head: head i by
    default (the last head when there are fewer), or ``head_index`` in the dict form.

    Args:
        entries: the config list, e.g. ``[["patches", ["flatten"]], ["images", ["flatten"]]]``.
        num_heads: number of heads (entries of ``MODEL.HEAD.PARAMS``).
        feature_names: the trunk's feature names.

    Returns:
        ``[(input name, feature names, head index), ...]`` in entry order.

    Raises:
        ValueError: a malformed entry, a repeated input name, an unknown feature, a head index
            out of range, or ``additional_keys`` (not supported).
    """
    if isinstance(entries, (ListConfig, DictConfig)):
        entries = OmegaConf.to_container(entries, resolve=True)
    where = "config.MODEL.MULTI_INPUT_HEAD_MAPPING"
    mapping: InputMapping = []
    for i, entry in enumerate(entries or []):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], (list, dict))):
            raise ValueError(f"{where}[{i}] = {entry!r}: write [input_name, [feature]] or "
                             "[input_name, {feat_names: [feature], head_index: 0}]")
        spec = entry[1] if isinstance(entry[1], dict) else {"feat_names": entry[1]}
        unknown = sorted(set(spec) - {"feat_names", "head_index"})
        if unknown:
            raise ValueError(f"{where}[{i}]: keys {unknown} are not supported; use feat_names "
                             "and head_index")
        feats = [str(f) for f in spec.get("feat_names") or []]
        head = int(spec.get("head_index", min(i, max(num_heads - 1, 0))))
        if entry[0] in [m[0] for m in mapping]:
            raise ValueError(f"{where}[{i}]: input '{entry[0]}' is mapped twice")
        bad = [f for f in feats if f not in feature_names]
        if len(feats) != 1 or bad:
            raise ValueError(f"{where}[{i}]: give exactly one trunk feature, one of "
                             f"{list(feature_names)}; got {feats}")
        if num_heads and not 0 <= head < num_heads:
            raise ValueError(f"{where}[{i}]: head_index {head} but MODEL.HEAD.PARAMS has "
                             f"{num_heads} heads")
        mapping.append((entry[0], feats, head))
    return mapping


class BaseSSLMultiInputOutputModel(nn.Module):
    """Trunk + heads; one output per head chain (pretraining) or per evaluated feature.

    Args:
        trunk: a registered trunk (``forward(x, out_feat_keys)``, ``feature_names``).
        heads: head modules, applied as described in :meth:`forward`.
        feature_pool_ops: ordered ``{trunk feature name: parameter-free pooling module}`` used by
            :meth:`extract_trunk_features` (and by :meth:`forward` when ``use_feature_pool_ops``);
            None means ``{"res5avg": nn.Identity()}``.
        use_feature_pool_ops: forward feeds the pooled features to the heads (feature
            evaluation) instead of the trunk's default output.
        flatten_features: flatten each pooled feature to (B, D).
        input_mapping: MODEL.MULTI_INPUT_HEAD_MAPPING parsed by :func:`parse_input_mapping`;
            used when :meth:`forward` gets a mapping of named inputs.

    Raises:
        ValueError: if a pooled feature is not one of the trunk's features.

    Example:
        >>> from sslcore.config import compose_config
        >>> cfg = compose_config(["config.MODEL.TRUNK.RESNETS.DEPTH=18"])
        >>> model = build_model(cfg.MODEL)
        >>> [y.shape for y in model(torch.randn(2, 3, 64, 64))]
        [torch.Size([2, 512])]
    """

    def __init__(self, *, trunk: nn.Module, heads: Sequence[nn.Module] = (),
                 feature_pool_ops: Optional[Mapping[str, nn.Module]] = None,
                 use_feature_pool_ops: bool = False, flatten_features: bool = True,
                 input_mapping: Optional[InputMapping] = None) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)
        pool_ops = nn.ModuleDict(feature_pool_ops if feature_pool_ops is not None
                                 else {"res5avg": nn.Identity()})
        unknown = [n for n in pool_ops if n not in trunk.feature_names]
        if unknown:
            raise ValueError(f"pooled features {unknown} are not trunk features; valid: "
                             f"{list(trunk.feature_names)}")
        self.feature_pool_ops = pool_ops
        self.use_feature_pool_ops = use_feature_pool_ops
        self.flatten_features = flatten_features
        self.input_mapping = list(input_mapping or [])
        self._trunk_frozen = False
        self._heads_frozen = False

    def freeze_trunk(self) -> None:
        """Stop training the trunk: no gradients, norm layers kept in eval mode by :meth:`train`."""
        self.trunk.requires_grad_(False)
        self._trunk_frozen = True
        self.trunk.train(False)

    def freeze_heads(self) -> None:
        """Stop training the heads: no gradients, norm layers kept in eval mode by :meth:`train`."""
        self.heads.requires_grad_(False)
        self._heads_frozen = True
        self.heads.train(False)

    @property
    def is_trunk_frozen(self) -> bool:
        """Whether :meth:`freeze_trunk` was called."""
        return self._trunk_frozen

    def train(self, mode: bool = True) -> "BaseSSLMultiInputOutputModel":
        """Set train/eval mode; frozen parts stay in eval mode (BatchNorm statistics fixed)."""
        super().train(mode)
        if self._trunk_frozen:
            self.trunk.train(False)
        if self._heads_frozen:
            self.heads.train(False)
        return self

    def _trunk_context(self) -> contextlib.AbstractContextManager:
        return torch.no_grad() if self._trunk_frozen else contextlib.nullcontext()

    def extract_trunk_features(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The trunk features of ``feature_pool_ops``, pooled (and flattened), by name.

        Call under ``torch.no_grad()`` after ``model.eval()`` to extract features for kNN/SVM.

        Args:
            x: images, (B, 3, H, W) float.

        Returns:
            ``{feature name: (B, D_name)}`` in ``LINEAR_EVAL_FEAT_POOL_OPS_MAP`` order
            ((B, C, H', W') when ``flatten_features`` is False).

        Raises:
            ValueError: if ``x`` does not fit the trunk.
        """
        names = list(self.feature_pool_ops)
        with self._trunk_context():
            outputs = self.trunk(x, out_feat_keys=names)
            pooled = {name: self.feature_pool_ops[name](out) for name, out in zip(names, outputs)}
        if self.flatten_features:
            pooled = {name: torch.flatten(out, 1) for name, out in pooled.items()}
        return pooled

    def _trunk_forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if self.use_feature_pool_ops:
            return list(self.extract_trunk_features(x).values())
        with self._trunk_context():
            return self.trunk(x)

    def _heads_forward(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        if not self.heads:
            return feats
        if len(feats) == 1:
            out = feats[0]
            for head in self.heads:
                out = head(out)
            return [out]
        if len(feats) == len(self.heads):
            return [head(feat) for head, feat in zip(self.heads, feats)]
        raise ValueError(
            f"the trunk gives {len(feats)} features (LINEAR_EVAL_FEAT_POOL_OPS_MAP: "
            f"{list(self.feature_pool_ops)}) but MODEL.HEAD.PARAMS lists {len(self.heads)} heads; "
            "list one head per feature, in the same order")

    def _multi_input_forward(self, inputs: Mapping[str, torch.Tensor]) -> List[torch.Tensor]:
        if not self.input_mapping:
            raise ValueError(f"the model got named inputs {sorted(inputs)} but "
                             "MODEL.MULTI_INPUT_HEAD_MAPPING is empty; map each input to a head")
        outputs = []
        for name, feat_names, head_index in self.input_mapping:
            if name not in inputs:
                raise ValueError(f"MODEL.MULTI_INPUT_HEAD_MAPPING names input '{name}' but the "
                                 f"batch has {sorted(inputs)}; check DATA.TRAIN.INPUT_KEY_NAMES")
            with self._trunk_context():
                (feat,) = self.trunk(inputs[name], out_feat_keys=feat_names)
            outputs.append(self.heads[head_index](feat) if self.heads else feat)
        return outputs

    def forward(self, x: Union[torch.Tensor, Sequence[torch.Tensor], Mapping[str, torch.Tensor]]
                ) -> List[torch.Tensor]:
        """Run trunk and heads.

        Heads: with one trunk output, every head is applied in sequence (a projection MLP
        written as several heads); with several (feature evaluation), head i takes feature i.
        Without heads the trunk outputs are returned.

        Args:
            x: images (B, 3, H, W) float, or a list of V view tensors (B, 3, H_v, W_v): runs of
                consecutive views with equal size go through the trunk together (multi-crop),
                the trunk outputs are concatenated view-major, (V*B, ...), and the heads run
                once on all of them. Or a mapping of named inputs (PIRL: ``{"patches":
                (9B, 3, h, w), "images": (B, 3, H, W)}``): each MULTI_INPUT_HEAD_MAPPING entry
                gives one output, in entry order.

        Returns:
            One tensor per head chain / evaluated feature, e.g. ``[(B, D)]`` in pretraining
            (a head that returns a list, like swav_head, gives that list in its place).

        Raises:
            ValueError: if the number of features and heads do not fit, or ``x`` does not fit
                the trunk.
        """
        if isinstance(x, torch.Tensor):
            return self._heads_forward(self._trunk_forward(x))
        if isinstance(x, Mapping):
            return self._multi_input_forward(x)
        if len(x) == 0:
            raise ValueError("model input is an empty list of views; pass (B, 3, H, W) tensors")
        groups: List[List[torch.Tensor]] = []
        for view in x:
            if groups and groups[-1][0].shape[1:] == view.shape[1:]:
                groups[-1].append(view)
            else:
                groups.append([view])
        # trunk once per resolution, heads once on every crop (VISSL / SwAV multi-res forward:
        # BatchNorm in a head sees all crops; a head may return a list, e.g. swav_head)
        per_group = [self._trunk_forward(torch.cat(g)) for g in groups]
        return self._heads_forward([torch.cat(feats) for feats in zip(*per_group)])


def _default_map_for_trunk(pool_ops_map: Any, trunk: nn.Module) -> Any:
    """The default map names ResNet's ``res5avg``; a trunk without it evaluates its own
    ``default_eval_feature`` (RegNet ``avgpool``, ViT ``lastCLS``, AlexNet ``flatten``)."""
    from omegaconf import ListConfig, OmegaConf

    plain = OmegaConf.to_container(pool_ops_map) if isinstance(pool_ops_map, ListConfig) else pool_ops_map
    feature = getattr(trunk, "default_eval_feature", None)
    if feature and plain == _DEFAULT_POOL_OPS_MAP and "res5avg" not in trunk.feature_names:
        return [[feature, ["Identity", []]]]
    return pool_ops_map


def build_model(model_cfg: Any) -> BaseSSLMultiInputOutputModel:
    """Build the model described by ``cfg.MODEL``.

    Reads ``MODEL.TRUNK`` (see :func:`~sslcore.models.trunks.build_trunk`), ``MODEL.HEAD`` (see
    :func:`~sslcore.models.heads.build_heads`) and ``MODEL.FEATURE_EVAL_SETTINGS``. With
    ``EVAL_MODE_ON``: ``FREEZE_TRUNK_ONLY`` freezes the trunk; ``FREEZE_TRUNK_AND_HEAD`` freezes
    both; ``EXTRACT_TRUNK_FEATURES_ONLY`` builds no heads and freezes the trunk;
    ``EVAL_TRUNK_AND_HEAD`` chains the heads on the trunk's default output (fine-tuning).
    An empty ``LINEAR_EVAL_FEAT_POOL_OPS_MAP`` means ``[["res5avg", ["Identity", []]]]``.

    Args:
        model_cfg: the ``MODEL`` section of a composed config (OmegaConf DictConfig).

    Returns:
        The model, on CPU, in training mode (frozen parts in eval mode).

    Raises:
        ValueError: for an invalid trunk, head or feature-evaluation setting, or freezing
            requested without ``EVAL_MODE_ON``; the message names the key.

    Example:
        >>> from sslcore.config import compose_config
        >>> cfg = compose_config(["config.MODEL.TRUNK.RESNETS.DEPTH=18",
        ...                       'config.MODEL.HEAD.PARAMS=[["mlp",{dims:[512,128]}]]'])
        >>> build_model(cfg.MODEL)(torch.randn(2, 3, 64, 64))[0].shape
        torch.Size([2, 128])
    """
    settings = model_cfg.FEATURE_EVAL_SETTINGS
    eval_on = bool(settings.EVAL_MODE_ON)
    flags = ["FREEZE_TRUNK_ONLY", "FREEZE_TRUNK_AND_HEAD", "EVAL_TRUNK_AND_HEAD",
             "EXTRACT_TRUNK_FEATURES_ONLY"]
    if not eval_on and any(settings[f] for f in flags):
        on = [f for f in flags if settings[f]]
        raise ValueError(f"config.MODEL.FEATURE_EVAL_SETTINGS.{on[0]} is set but EVAL_MODE_ON is "
                         "False; set config.MODEL.FEATURE_EVAL_SETTINGS.EVAL_MODE_ON=True")
    trunk = build_trunk(model_cfg.TRUNK)
    pool_ops_map = _default_map_for_trunk(
        settings.LINEAR_EVAL_FEAT_POOL_OPS_MAP or _DEFAULT_POOL_OPS_MAP, trunk)
    pool_ops = build_feature_pool_ops(pool_ops_map, trunk.feature_names)
    extract_only = eval_on and bool(settings.EXTRACT_TRUNK_FEATURES_ONLY)
    heads = [] if extract_only else build_heads(model_cfg.HEAD)
    mapping = parse_input_mapping(model_cfg.get("MULTI_INPUT_HEAD_MAPPING"), len(heads),
                                  trunk.feature_names)
    model = BaseSSLMultiInputOutputModel(
        trunk=trunk, heads=heads, feature_pool_ops=pool_ops,
        use_feature_pool_ops=eval_on and not settings.EVAL_TRUNK_AND_HEAD,
        flatten_features=bool(settings.SHOULD_FLATTEN_FEATS), input_mapping=mapping)
    if eval_on and (settings.FREEZE_TRUNK_ONLY or settings.FREEZE_TRUNK_AND_HEAD or extract_only):
        model.freeze_trunk()
    if eval_on and settings.FREEZE_TRUNK_AND_HEAD:
        model.freeze_heads()
    log.info("built model: trunk %s, %d head(s), eval mode %s, trunk frozen %s",
             model_cfg.TRUNK.NAME, len(heads), eval_on, model.is_trunk_frozen)
    return model
