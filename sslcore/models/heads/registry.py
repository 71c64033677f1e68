"""The head registry and the functions that build heads from ``MODEL.HEAD``.

A head maps trunk features to what a loss or a classifier consumes (VISSL's "head"). Every
registered head is an ``nn.Module`` class whose constructor takes typed keyword arguments; a config
entry of ``MODEL.HEAD.PARAMS`` is ``[name, {argument: value}]``, VISSL's format, e.g.
``["mlp", {"dims": [512, 512, 128], "use_relu": True}]``. Heads that take ``batchnorm_eps`` /
``batchnorm_momentum`` get them from ``MODEL.HEAD.BATCHNORM_EPS`` / ``BATCHNORM_MOMENTUM`` unless
the entry sets them.
"""

from __future__ import annotations

import inspect
from typing import Any, List, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.registry import Registry, close_matches

HEADS: Registry = Registry("head")

declare("MODEL.HEAD", {
    "PARAMS": Key([], list, "the heads, VISSL format: a list of [name, {kwargs}]. In pretraining "
                  "they are chained on the trunk's output; in feature evaluation with several "
                  "features, head i takes feature i. [] means no head"),
    "BATCHNORM_EPS": Key(1e-5, float, "eps of BatchNorm layers inside heads"),
    "BATCHNORM_MOMENTUM": Key(0.1, float, "momentum of BatchNorm layers inside heads "
                              "(torch convention: weight of the new batch statistics)"),
})


def build_head(name: str, params: Mapping[str, Any], *, batchnorm_eps: float = 1e-5,
               batchnorm_momentum: float = 0.1, where: str = "head") -> nn.Module:
    """Build the head registered as ``name`` with keyword arguments ``params``.

    Args:
        name: registry key, e.g. ``"mlp"`` or ``"eval_mlp"``.
        params: the head's keyword arguments.
        batchnorm_eps: passed when the head takes it and ``params`` does not set it.
        batchnorm_momentum: likewise.
        where: the config path named in error messages.

    Returns:
        The head module.

    Raises:
        ValueError: if ``name`` is not registered or ``params`` holds an argument the head does
            not take (both messages list the valid names).
    """
    try:
        head_cls = HEADS.get(name)
    except KeyError as exc:
        raise ValueError(f"{where}: {exc.args[0]}") from None
    accepted = [p for p in inspect.signature(head_cls).parameters if p not in ("self", "args", "kwargs")]
    unknown = [k for k in params if k not in accepted]
    if unknown:
        hints = {k: close_matches(k, accepted, n=1) for k in unknown}
        hint = "; ".join(f"'{k}' (did you mean {h[0]!r}?)" if h else f"'{k}'" for k, h in hints.items())
        raise ValueError(f"{where}: head '{name}' takes no argument {hint}. "
                         f"Its arguments are: {', '.join(accepted)}")
    kwargs = dict(params)
    defaults = {"batchnorm_eps": batchnorm_eps, "batchnorm_momentum": batchnorm_momentum}
    for key, value in defaults.items():
        if key in accepted and key not in kwargs:
            kwargs[key] = value
    return head_cls(**kwargs)


def build_heads(head_cfg: Any) -> List[nn.Module]:
    """Build every head listed in ``MODEL.HEAD.PARAMS``, in order.

    An entry is one head ``[name, {kwargs}]``, or (VISSL) a head chain ``[[name, {kwargs}], ...]``
    built as one ``nn.Sequential`` (state-dict keys ``heads.<i>.<j>.*``).

    Args:
        head_cfg: the ``MODEL.HEAD`` section.

    Returns:
        The heads, possibly empty.

    Raises:
        ValueError: if an entry is not ``[name, {kwargs}]`` or a head rejects its arguments;
            the message names the entry, e.g. ``MODEL.HEAD.PARAMS[1]``.

    Example:
        >>> from sslcore.config import compose_config
        >>> cfg = compose_config(['config.MODEL.HEAD.PARAMS=[["mlp", {"dims": [512, 128]}]]'])
        >>> build_heads(cfg.MODEL.HEAD)
    """
    entries = head_cfg.PARAMS
    if isinstance(entries, (ListConfig, DictConfig)):
        entries = OmegaConf.to_container(entries, resolve=True)
    heads = []
    for index, entry in enumerate(entries or []):
        where = f"config.MODEL.HEAD.PARAMS[{index}]"
        if isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], (list, tuple)):
            heads.append(nn.Sequential(*[_build_entry(module, f"{where}[{j}]", head_cfg)
                                         for j, module in enumerate(entry)]))
        else:
            heads.append(_build_entry(entry, where, head_cfg))
    return heads


def _build_entry(entry: Any, where: str, head_cfg: Any) -> nn.Module:
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
            and isinstance(entry[1], dict)):
        raise ValueError(f"{where} = {entry!r}: each head is written [name, {{kwargs}}], "
                         'e.g. ["mlp", {"dims": [2048, 128]}]')
    return build_head(entry[0], entry[1], where=where,
                      batchnorm_eps=float(head_cfg.BATCHNORM_EPS),
                      batchnorm_momentum=float(head_cfg.BATCHNORM_MOMENTUM))
