"""Collators: a list of VISSL samples -> one batch, dropping and counting invalid samples.

Batch format (the engine relies on it)::

    {"data": [Tensor (N, C, H, W), ...],   # a list: one tensor per group (see each collator)
     "label": Tensor (N,) int64,          # (N, C) for multi-hot labels
     "data_idx": Tensor (N,) int64,         # dataset index of each row
     "num_skipped": int}                    # samples dropped because data_valid was False

A sample is dropped when any of its views has ``data_valid`` False (an unreadable image). When a
whole batch is invalid the tensors have N = 0 and the placeholder's C, H, W.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from sslcore.config.schema import Key, declare
from sslcore.registry import Registry

for _split in ("TRAIN", "TEST"):
    declare(f"DATA.{_split}", {
        "COLLATE_FUNCTION": Key("default_collate", str, "batch builder from sslcore.data.collators."
                                "COLLATORS: default_collate, simclr_collator or multicrop_collator"),
        "COLLATE_FUNCTION_PARAMS": Key({}, dict, "keyword arguments of COLLATE_FUNCTION"),
    })

Batch = Dict[str, Any]
COLLATORS: Registry[Callable[..., Batch]] = Registry("collator")


def split_valid(batch: Sequence[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], int]:
    """Separate usable samples from invalid ones.

    Returns:
        ``(valid samples, number of invalid samples)``.

    Raises:
        ValueError: if ``batch`` is empty.
    """
    if not batch:
        raise ValueError("cannot collate an empty list of samples")
    valid = [s for s in batch if all(s.get("data_valid", [True]))]
    return valid, len(batch) - len(valid)


def _stack(views: List[Any], like: Any) -> torch.Tensor:
    for view in views[:1] + [like]:
        if not isinstance(view, torch.Tensor):
            raise TypeError(
                f"collators stack tensors, got {type(view).__name__}; end DATA.<split>.TRANSFORMS "
                "with {name: ToTensor}"
            )
    if not views:
        return like.new_zeros((0, *like.shape))
    shapes = {tuple(v.shape) for v in views}
    if len(shapes) > 1:
        raise ValueError(
            f"views of different shapes {sorted(shapes)} cannot be stacked; resize them to one size "
            "(RandomResizedCrop / Resize) or use multicrop_collator for several resolutions"
        )
    return torch.stack(views)


def _num_views(batch: Sequence[Dict[str, Any]]) -> int:
    counts = {len(s["data"]) for s in batch}
    if len(counts) != 1:
        raise ValueError(
            f"samples in one batch have different numbers of views {sorted(counts)}; check TRANSFORMS"
        )
    return counts.pop()


def _ints(values: List[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


@COLLATORS.register("default_collate")
def default_collate(batch: Sequence[Dict[str, Any]]) -> Batch:
    """Stack each view position separately: ``data[v]`` holds view v of every sample.

    Args:
        batch: B samples with V views each, views (C, H, W) tensors.

    Returns:
        ``data``: V tensors (B', C, H, W), B' = valid samples; ``label`` and ``data_idx``: (B',)
        from each sample's first view; ``num_skipped``: B - B'.

    Raises:
        TypeError: views that are not tensors (add ToTensor).
        ValueError: different view counts or shapes within a view position.
    """
    valid, skipped = split_valid(batch)
    num_views = _num_views(batch)
    data = [_stack([s["data"][v] for s in valid], batch[0]["data"][v]) for v in range(num_views)]
    return {"data": data, "label": _ints([s["label"][0] for s in valid]),
            "data_idx": _ints([s["data_idx"][0] for s in valid]), "num_skipped": skipped}


def _view_major(valid: List[Dict[str, Any]], views: List[int], key: str) -> List[Any]:
    return [s[key][v] for v in views for s in valid]


@COLLATORS.register("simclr_collator")
def simclr_collator(batch: Sequence[Dict[str, Any]]) -> Batch:
    """All views in ONE tensor, view-major, as SimCLR's loss expects (Chen et al., 2020,
    https://arxiv.org/abs/2002.05709): rows [view 0 of samples 0..B-1, view 1 of samples 0..B-1, ...],
    so row i and row i + B are two views of the same sample.

    Args:
        batch: B samples with V views each, all views (C, H, W) of one size.

    Returns:
        ``data``: [Tensor (V*B', C, H, W)]; ``label``, ``data_idx``: (V*B',) in the same row
        order; ``num_skipped``: B - B'.

    Raises:
        TypeError: views that are not tensors (add ToTensor).
        ValueError: different view counts or view sizes.
    """
    valid, skipped = split_valid(batch)
    views = list(range(_num_views(batch)))
    data = _stack(_view_major(valid, views, "data"), batch[0]["data"][0])
    return {"data": [data], "label": _ints(_view_major(valid, views, "label")),
            "data_idx": _ints(_view_major(valid, views, "data_idx")), "num_skipped": skipped}


@COLLATORS.register("multicrop_collator")
def multicrop_collator(batch: Sequence[Dict[str, Any]]) -> Batch:
    """One tensor per resolution, each view-major (multi-crop: SwAV, Caron et al., 2020,
    https://arxiv.org/abs/2006.09882; DINO).

    Views are grouped by their (H, W) in order of first appearance; within a group the rows are
    [crop j of samples 0..B-1 for each crop j of that resolution]. ``label`` and ``data_idx``
    follow the rows of ``data[0]``, then ``data[1]``, ...

    Args:
        batch: B samples with V views each, (C, H, W) tensors of one or more sizes.

    Returns:
        ``data``: R tensors (V_r*B', C, H_r, W_r); ``label``, ``data_idx``: (V*B',);
        ``num_skipped``: B - B'.

    Raises:
        TypeError: views that are not tensors (add ToTensor).
        ValueError: different view counts between samples.
    """
    valid, skipped = split_valid(batch)
    _num_views(batch)
    groups: Dict[Tuple[int, ...], List[int]] = {}
    for v, view in enumerate(batch[0]["data"]):
        groups.setdefault(tuple(getattr(view, "shape", ())), []).append(v)
    data, labels, indices = [], [], []
    for views in groups.values():
        data.append(_stack(_view_major(valid, views, "data"), batch[0]["data"][views[0]]))
        labels += _view_major(valid, views, "label")
        indices += _view_major(valid, views, "data_idx")
    return {"data": data, "label": _ints(labels), "data_idx": _ints(indices), "num_skipped": skipped}


@COLLATORS.register("moco_collator")
def moco_collator(batch: Sequence[Dict[str, Any]]) -> Batch:
    """MoCo's two views apart, VISSL's layout (He et al., 2020, https://arxiv.org/abs/1911.05722):
    view 0 of every sample for the query encoder in ``data``, view 1 for the momentum (key)
    encoder in ``data_momentum``. The method moves ``data_momentum`` to the device itself.

    Args:
        batch: B samples with exactly 2 views each, (C, H, W) tensors.

    Returns:
        ``data``: [Tensor (B', C, H, W)]; ``data_momentum``: [Tensor (B', C, H, W)], row i the
        same sample as in ``data``; ``label``, ``data_idx``: (B',); ``num_skipped``: B - B'.

    Raises:
        TypeError: views that are not tensors (add ToTensor).
        ValueError: a sample without exactly 2 views (use {name: ImgReplicatePil, num_times: 2}).
    """
    views = _num_views(batch)
    if views != 2:
        raise ValueError(f"moco_collator needs exactly 2 views per sample (query, key), got {views}; "
                         "start TRANSFORMS with {name: ImgReplicatePil, num_times: 2}")
    out = default_collate(batch)
    query, key = out.pop("data")
    return {"data": [query], "data_momentum": [key], **out}


def build_collator(name: str, params: Optional[Dict[str, Any]] = None
                   ) -> Callable[[Sequence[Dict[str, Any]]], Batch]:
    """Look up a collator and bind its COLLATE_FUNCTION_PARAMS.

    Args:
        name: a name in :data:`COLLATORS`.
        params: keyword arguments for it (None or {} for none).

    Returns:
        ``samples -> batch`` (picklable, so it works in DataLoader workers).

    Raises:
        KeyError: unknown name (lists close names).
        ValueError: parameters the collator does not accept.

    Example:
        >>> collate = build_collator("simclr_collator", {})
        >>> collate(samples)["data"][0].shape  # (V*B, C, H, W)
    """
    fn = COLLATORS.get(name)
    params = dict(params or {})
    try:
        inspect.signature(fn).bind([], **params)
    except TypeError as exc:
        accepted = list(inspect.signature(fn).parameters)[1:]
        raise ValueError(
            f"collator {name}: bad COLLATE_FUNCTION_PARAMS {sorted(params)} ({exc}); accepted: {accepted}"
        ) from exc
    return functools.partial(fn, **params) if params else fn
