"""Convert timm ResNet and Vision Transformer weights to sslcore/VISSL checkpoints.

- timm's plain ``resnet*`` / ``resnext*`` (``timm.models.resnet.ResNet`` with the default stem) use
  torchvision's key names, so they go through
  :func:`sslcore.convert.torchvision.convert_torchvision_to_vissl`.
- sslcore's ``vision_transformer`` trunk *is* timm's ``VisionTransformer`` (class token, token
  pooling, no classifier), so the ViT mapping is the identity on the trunk keys (``cls_token``,
  ``pos_embed``, ``patch_embed.proj.*``, ``blocks.<i>.*``, ``norm.*``); the classifier ``head.*``
  is dropped. The trunk settings (``MODEL.TRUNK.VISION_TRANSFORMERS``) are read off the shapes and
  the converted keys are checked against an sslcore trunk built with them, so timm variants sslcore
  does not model (register tokens, LayerScale, average pooling with ``fc_norm``) are refused.

Papers: ViT, Dosovitskiy et al. 2020, https://arxiv.org/abs/2010.11929; timm,
https://github.com/huggingface/pytorch-image-models.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

from sslcore.convert.torchvision import convert_torchvision_to_vissl
from sslcore.convert.vissl_state import extract_trunk_state, wrap_trunk_state

log = logging.getLogger(__name__)


def infer_vit_settings(state: Mapping[str, torch.Tensor], *,
                       num_heads: Optional[int] = None) -> Dict[str, Any]:
    """``MODEL.TRUNK.VISION_TRANSFORMERS`` keys of a timm/sslcore ViT state dict, from its shapes.

    Args:
        state: ViT state dict (``patch_embed.proj.weight`` (D, 3, P, P), ``pos_embed``
            (1, 1 + G*G, D), ``blocks.<i>.mlp.fc1.weight`` (MLP, D), ...).
        num_heads: attention heads; weights do not record them, so by default D // 64 (the head
            width of ViT-Ti/S/B/L).

    Returns:
        ``{"IMAGE_SIZE", "PATCH_SIZE", "HIDDEN_DIM", "NUM_LAYERS", "NUM_HEADS", "MLP_DIM", "QKV_BIAS"}``.

    Raises:
        ValueError: if the state is not a ViT with a class token and a square position grid.
    """
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state or "cls_token" not in state:
        raise ValueError("not a class-token ViT: expected 'patch_embed.proj.weight', 'pos_embed' and "
                         f"'cls_token'; first keys {list(state)[:5]}")
    hidden, _, patch, _ = state["patch_embed.proj.weight"].shape
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    if grid * grid != state["pos_embed"].shape[1] - 1:
        raise ValueError(f"pos_embed {tuple(state['pos_embed'].shape)} is not 1 + a square grid of patches")
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    heads = int(num_heads) if num_heads else max(1, hidden // 64)
    return {"IMAGE_SIZE": int(grid * patch), "PATCH_SIZE": int(patch), "HIDDEN_DIM": int(hidden),
            "NUM_LAYERS": layers, "NUM_HEADS": heads,
            "MLP_DIM": int(state["blocks.0.mlp.fc1.weight"].shape[0]),
            "QKV_BIAS": "blocks.0.attn.qkv.bias" in state}


def convert_timm_vit_to_vissl(state: Union[nn.Module, Mapping[str, Any]], *,
                              num_heads: Optional[int] = None) -> Dict[str, Any]:
    """Map a timm ``VisionTransformer`` to an sslcore ``vision_transformer`` checkpoint.

    Args:
        state: the timm model (its ``num_heads`` is read) or its state dict (optionally with
            ``module.`` prefixes or under ``"state_dict"``/``"model"``).
        num_heads: attention heads when ``state`` is a state dict (see :func:`infer_vit_settings`).

    Returns:
        A checkpoint (:func:`sslcore.convert.vissl_state.wrap_trunk_state`) with
        ``config = {"MODEL": {"TRUNK": {"NAME": "vision_transformer", "VISION_TRANSFORMERS": ...}}}``.

    Raises:
        ValueError: if the keys or shapes differ from an sslcore ViT of the inferred settings (the
            message lists the differing keys).
    """
    if isinstance(state, nn.Module):
        num_heads = num_heads or state.blocks[0].attn.num_heads
        state = state.state_dict()
    for wrapper in ("state_dict", "model"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    flat = {k: v for k, v in extract_trunk_state(state).items() if not k.startswith("head.")}
    settings = infer_vit_settings(flat, num_heads=num_heads)
    _check_against_sslcore_vit(flat, settings)
    config = {"MODEL": {"TRUNK": {"NAME": "vision_transformer", "VISION_TRANSFORMERS": settings}}}
    return wrap_trunk_state(flat, config=config)


def _check_against_sslcore_vit(flat: Mapping[str, torch.Tensor], settings: Mapping[str, Any]) -> None:
    from sslcore.models.trunks.vision_transformer import VisionTransformer

    own = VisionTransformer(image_size=settings["IMAGE_SIZE"], patch_size=settings["PATCH_SIZE"],
                            hidden_dim=settings["HIDDEN_DIM"], num_layers=settings["NUM_LAYERS"],
                            num_heads=settings["NUM_HEADS"], mlp_dim=settings["MLP_DIM"],
                            qkv_bias=settings["QKV_BIAS"]).state_dict()
    extra = sorted(set(flat) - set(own))
    missing = sorted(set(own) - set(flat))
    wrong = sorted(k for k in set(own) & set(flat) if tuple(own[k].shape) != tuple(flat[k].shape))
    if extra or missing or wrong:
        raise ValueError(f"this timm ViT does not match sslcore's vision_transformer: extra keys "
                         f"{extra[:5]}, missing {missing[:5]}, other shapes {wrong[:5]} (register "
                         "tokens, LayerScale and fc_norm/average pooling are not supported)")


def convert_timm_to_vissl(state: Union[nn.Module, Mapping[str, Any]], *,
                          num_heads: Optional[int] = None) -> Dict[str, Any]:
    """Convert a timm ResNe(X)t or ViT (model or state dict) to an sslcore/VISSL checkpoint.

    Args:
        state: timm model or state dict; a ViT is recognised by ``patch_embed.proj.weight``.
        num_heads: ViT attention heads for a state dict (see :func:`infer_vit_settings`).

    Returns:
        The checkpoint of :func:`convert_timm_vit_to_vissl` or
        :func:`sslcore.convert.torchvision.convert_torchvision_to_vissl`.

    Raises:
        ValueError: as those functions.

    Example:
        >>> from timm.models.vision_transformer import VisionTransformer as TimmViT
        >>> vit = TimmViT(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=0)
        >>> convert_timm_to_vissl(vit)["config"]["MODEL"]["TRUNK"]["NAME"]
        'vision_transformer'
    """
    keys = state.state_dict().keys() if isinstance(state, nn.Module) else _unwrapped_keys(state)
    if any(k.endswith("patch_embed.proj.weight") for k in keys):
        return convert_timm_vit_to_vissl(state, num_heads=num_heads)
    if isinstance(state, nn.Module):
        state = state.state_dict()
    return convert_torchvision_to_vissl(state)


def _unwrapped_keys(state: Mapping[str, Any]) -> Any:
    for wrapper in ("state_dict", "model"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    return state.keys()
