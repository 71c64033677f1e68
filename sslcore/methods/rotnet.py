"""RotNet: learn features by predicting which of K rotations was applied to an image.

- [0] RotNet, Gidaris, Singh & Komodakis 2018, https://arxiv.org/abs/1803.07728

RotNet has no method state. It is the label-driven method of :mod:`sslcore.methods.supervised`
(``LOSS.name: cross_entropy_multiple_output_single_target``) trained on the rotation ids that the
transform :class:`sslcore.data.rotation.ImgRotatePil` writes into each view's label. A recipe is::

    DATA.TRAIN.TRANSFORMS: [{name: ImgRotatePil, num_angles: 4, num_rotations_per_img: 4}, ...]
    DATA.TRAIN.COLLATE_FUNCTION: simclr_collator     # one row and one label per rotated view
    MODEL.HEAD.PARAMS: [["mlp", {"dims": [2048, 4]}]] # one logit per angle
    LOSS.name: cross_entropy_multiple_output_single_target

This module holds the config rule that catches the two ways such a recipe goes wrong before any
data is read (:func:`check_rotation_config`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

ROTATION_TRANSFORM = "ImgRotatePil"
# collators that give every view its own row and label (default_collate keeps view 0's label only)
_PER_VIEW_LABEL_COLLATORS = ("simclr_collator", "multicrop_collator")


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def find_rotation(transforms: Sequence[Any]) -> Optional[Tuple[int, int]]:
    """The ImgRotatePil settings of a TRANSFORMS list.

    Args:
        transforms: a ``DATA.<split>.TRANSFORMS`` list.

    Returns:
        ``(num_angles, num_rotations_per_img)`` with the transform's defaults (4, 1), or None
        when the list has no ImgRotatePil.
    """
    for spec in _plain(transforms) or []:
        if isinstance(spec, dict) and spec.get("name") == ROTATION_TRANSFORM:
            return int(spec.get("num_angles", 4)), int(spec.get("num_rotations_per_img", 1))
    return None


def last_head_width(head_params: Sequence[Any]) -> Optional[int]:
    """Output width of the last head when its ``dims`` say so (``mlp``, ``eval_mlp``), else None."""
    params = _plain(head_params) or []
    if not params:
        return None
    last = params[-1]
    if isinstance(last, (list, tuple)) and len(last) == 2 and isinstance(last[1], dict):
        dims = last[1].get("dims")
        if isinstance(dims, list) and dims:
            return int(dims[-1])
    return None


def check_rotation_config(cfg: DictConfig) -> None:
    """Check a RotNet training config (no-op without ImgRotatePil in DATA.TRAIN.TRANSFORMS).

    Raises:
        ValueError: several rotations per image with a collator that keeps one label per sample,
            or a last head whose width differs from ``num_angles``; the message names the key
            and the value to set.
    """
    found = find_rotation(cfg.DATA.TRAIN.TRANSFORMS)
    if found is None:
        return
    num_angles, per_image = found
    collate = str(cfg.DATA.TRAIN.COLLATE_FUNCTION)
    if per_image > 1 and collate not in _PER_VIEW_LABEL_COLLATORS:
        raise ValueError(
            f"ImgRotatePil makes {per_image} rotated views per image, but "
            f"config.DATA.TRAIN.COLLATE_FUNCTION={collate} keeps one label per sample; set "
            "config.DATA.TRAIN.COLLATE_FUNCTION=simclr_collator (one row and label per view)")
    width = last_head_width(cfg.MODEL.HEAD.PARAMS)
    if width is not None and width != num_angles:
        raise ValueError(
            f"ImgRotatePil has num_angles={num_angles} but the last head of config.MODEL.HEAD.PARAMS "
            f"outputs {width} logits; make its last dim {num_angles} (one logit per rotation)")
