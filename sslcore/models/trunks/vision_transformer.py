"""Vision Transformer trunk (registry key ``"vision_transformer"``), timm's ViT with VISSL's keys.

Built from ``MODEL.TRUNK.VISION_TRANSFORMERS`` (VISSL's keys). The trunk *is* a
``timm.models.vision_transformer.VisionTransformer`` without a classifier, so its parameter names
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.<i>.attn.qkv``, ``norm``) are the
ones VISSL's and DINO's ViT checkpoints use. Position embeddings are interpolated for other input
sizes (multi-crop's small crops). No pretrained weights are ever downloaded.

Features (VISSL's names, D = HIDDEN_DIM, L = NUM_LAYERS, every token after the final LayerNorm):

============== =============================== ===========================================
name           shape                           what
============== =============================== ===========================================
lastCLS        (B, D)                          class token of the last block (the default)
blkCLS<i>      (B, D)                          class token after block i (0-based)
concatCLS<n>   (B, n * D)                      class tokens of the last n blocks, concatenated
                                               (DINO's linear probe uses n = 4)
lastMAP        (B, D, H/P, W/P)                patch tokens of the last block as a map
lastBLK        (B, 1 + HW/P^2, D)              all tokens of the last block
concatBLK<n>   (B, 1 + HW/P^2, n * D)          all tokens of the last n blocks
============== =============================== ===========================================

``lastMAP`` is channels-first here so the pooling ops of LINEAR_EVAL_FEAT_POOL_OPS_MAP apply
(VISSL returns it channels-last).

Papers:
    - [0] ViT, Dosovitskiy et al. 2020, https://arxiv.org/abs/2010.11929
    - [1] DeiT (stochastic depth), Touvron et al. 2020, https://arxiv.org/abs/2012.12877
    - [2] DINO (ViT-S/16, concatCLS4 probe), Caron et al. 2021, https://arxiv.org/abs/2104.14294
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

from sslcore.config.schema import Key, declare
from sslcore.models.trunks.feature_blocks import check_feature_names
from sslcore.models.trunks.registry import TRUNKS

declare("MODEL.TRUNK.VISION_TRANSFORMERS", {
    "name": Key(None, str, "a preset that sets PATCH_SIZE, HIDDEN_DIM, NUM_LAYERS, NUM_HEADS and "
                "MLP_DIM: vit_t_16, vit_s_16, vit_s_8, vit_b_16, vit_b_8, vit_b_32, vit_l_16, "
                "vit_l_32, vit_h_14; null uses the keys below", nullable=True),
    "IMAGE_SIZE": Key(224, int, "input side in pixels the position embeddings are made for "
                      "(other sizes are interpolated)"),
    "PATCH_SIZE": Key(16, int, "patch side P in pixels"),
    "NUM_LAYERS": Key(12, int, "transformer blocks L"),
    "NUM_HEADS": Key(12, int, "attention heads per block"),
    "HIDDEN_DIM": Key(768, int, "token width D"),
    "MLP_DIM": Key(3072, int, "hidden width of each block's MLP"),
    "DROPOUT_RATE": Key(0.0, float, "dropout after the position embedding, attention projection "
                        "and MLP"),
    "ATTENTION_DROPOUT_RATE": Key(0.0, float, "dropout on the attention weights"),
    "DROP_PATH_RATE": Key(0.0, float, "stochastic depth, rising linearly to this rate at the last "
                          "block (DeiT)"),
    "QKV_BIAS": Key(False, bool, "bias in the query/key/value projection"),
    "QK_SCALE": Key(False, bool, "VISSL's custom attention scale; only False (1/sqrt(head dim))"),
    "CLASSIFIER": Key("token", str, "the image representation: the class token", choices=("token",)),
})

# name -> (PATCH_SIZE, HIDDEN_DIM, NUM_LAYERS, NUM_HEADS, MLP_DIM)
PRESETS: Dict[str, Tuple[int, int, int, int, int]] = {
    "vit_t_16": (16, 192, 12, 3, 768),
    "vit_s_16": (16, 384, 12, 6, 1536),
    "vit_s_8": (8, 384, 12, 6, 1536),
    "vit_b_16": (16, 768, 12, 12, 3072),
    "vit_b_8": (8, 768, 12, 12, 3072),
    "vit_b_32": (32, 768, 12, 12, 3072),
    "vit_l_16": (16, 1024, 24, 16, 4096),
    "vit_l_32": (32, 1024, 24, 16, 4096),
    "vit_h_14": (14, 1280, 32, 16, 5120),
}


@TRUNKS.register("vision_transformer")
class VisionTransformer(TimmVisionTransformer):
    """timm's ViT (class token, LayerNorm eps 1e-6, no classifier) with VISSL's feature names.

    Papers: [0] https://arxiv.org/abs/2010.11929, [1] https://arxiv.org/abs/2012.12877,
    [2] https://arxiv.org/abs/2104.14294

    Args:
        image_size: input side the position embeddings are built for (pixels).
        patch_size: P (pixels); input sides must be multiples of P.
        hidden_dim: D.
        num_layers: L.
        num_heads: heads; must divide D.
        mlp_dim: MLP hidden width.
        dropout_rate: dropout after the position embedding and in attention projection / MLP.
        attention_dropout_rate: dropout on attention weights.
        drop_path_rate: final stochastic-depth rate.
        qkv_bias: bias in the qkv projection.

    Raises:
        ValueError: if num_heads does not divide hidden_dim, image_size is not a multiple of
            patch_size, or a rate is outside [0, 1).

    Example:
        >>> trunk = VisionTransformer(image_size=32, patch_size=8, hidden_dim=64, num_layers=2,
        ...                           num_heads=4, mlp_dim=128)
        >>> cls, fmap = trunk(torch.randn(2, 3, 32, 32), out_feat_keys=["lastCLS", "lastMAP"])
        >>> cls.shape, fmap.shape
        (torch.Size([2, 64]), torch.Size([2, 64, 4, 4]))
    """

    def __init__(self, *, image_size: int = 224, patch_size: int = 16, hidden_dim: int = 768,
                 num_layers: int = 12, num_heads: int = 12, mlp_dim: int = 3072,
                 dropout_rate: float = 0.0, attention_dropout_rate: float = 0.0,
                 drop_path_rate: float = 0.0, qkv_bias: bool = False) -> None:
        key = "MODEL.TRUNK.VISION_TRANSFORMERS"
        if hidden_dim % num_heads:
            raise ValueError(f"{key}.NUM_HEADS={num_heads} must divide HIDDEN_DIM={hidden_dim}")
        if image_size % patch_size:
            raise ValueError(f"{key}.IMAGE_SIZE={image_size} must be a multiple of "
                             f"PATCH_SIZE={patch_size}")
        for name, rate in (("DROPOUT_RATE", dropout_rate), ("ATTENTION_DROPOUT_RATE",
                           attention_dropout_rate), ("DROP_PATH_RATE", drop_path_rate)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{key}.{name}={rate} must be in [0, 1)")
        super().__init__(img_size=image_size, patch_size=patch_size, num_classes=0,
                         global_pool="token", embed_dim=hidden_dim, depth=num_layers,
                         num_heads=num_heads, mlp_ratio=mlp_dim / hidden_dim, qkv_bias=qkv_bias,
                         class_token=True, dynamic_img_size=True, pos_drop_rate=dropout_rate,
                         proj_drop_rate=dropout_rate, attn_drop_rate=attention_dropout_rate,
                         drop_path_rate=drop_path_rate)
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        names = ["lastCLS", "lastMAP", "lastBLK"] + [f"blkCLS{i}" for i in range(num_layers)]
        names += [f"concatCLS{n}" for n in range(1, num_layers + 1)]
        names += [f"concatBLK{n}" for n in range(1, num_layers + 1)]
        self._feature_names = names
        self.feature_channels: Dict[str, int] = {
            n: hidden_dim * (int(n[9:]) if n.startswith("concat") else 1) for n in names}

    @classmethod
    def from_config(cls, trunk_cfg: Any) -> "VisionTransformer":
        """Build from ``MODEL.TRUNK.VISION_TRANSFORMERS`` (a ``name`` preset overrides the sizes).

        Raises:
            ValueError: unknown preset, QK_SCALE set, or invalid sizes (see the constructor).
        """
        v = trunk_cfg.VISION_TRANSFORMERS
        sizes = [int(v.PATCH_SIZE), int(v.HIDDEN_DIM), int(v.NUM_LAYERS), int(v.NUM_HEADS),
                 int(v.MLP_DIM)]
        if v.name:
            if v.name not in PRESETS:
                raise ValueError(f"config.MODEL.TRUNK.VISION_TRANSFORMERS.name={v.name!r} is not a "
                                 f"preset; use one of {sorted(PRESETS)} or null")
            sizes = list(PRESETS[str(v.name)])
        if v.QK_SCALE:
            raise ValueError("config.MODEL.TRUNK.VISION_TRANSFORMERS.QK_SCALE must be False: the "
                             "attention scale is 1/sqrt(head dim)")
        patch, hidden, layers, heads, mlp = sizes
        return cls(image_size=int(v.IMAGE_SIZE), patch_size=patch, hidden_dim=hidden,
                   num_layers=layers, num_heads=heads, mlp_dim=mlp,
                   dropout_rate=float(v.DROPOUT_RATE),
                   attention_dropout_rate=float(v.ATTENTION_DROPOUT_RATE),
                   drop_path_rate=float(v.DROP_PATH_RATE), qkv_bias=bool(v.QKV_BIAS))

    @property
    def feature_names(self) -> List[str]:
        """Every feature name ``forward`` accepts (see the module docstring)."""
        return list(self._feature_names)

    @property
    def default_eval_feature(self) -> str:
        """The feature evaluated when LINEAR_EVAL_FEAT_POOL_OPS_MAP names none (``lastCLS``)."""
        return "lastCLS"

    def _block_index(self, name: str) -> List[int]:
        """The blocks (0-based) whose normalised tokens a feature needs."""
        last = self.num_layers - 1
        if name.startswith("blkCLS"):
            return [int(name[6:])]
        if name.startswith("concat"):
            return list(range(self.num_layers - int(name[9:]), self.num_layers))
        return [last]

    def forward(self, x: torch.Tensor, out_feat_keys: Optional[Sequence[str]] = None) -> List[torch.Tensor]:
        """Return the requested features (the class token of the last block by default).

        Args:
            x: (B, 3, H, W) float images; H and W multiples of the patch size.
            out_feat_keys: feature names (module docstring) in the order wanted; None or empty
                means ``["lastCLS"]``.

        Returns:
            One tensor per requested name. Blocks after the deepest one needed do not run.

        Raises:
            ValueError: wrong input shape or unknown feature name.
        """
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % self.patch_size or x.shape[3] % self.patch_size:
            raise ValueError(f"vision_transformer expects (B, 3, H, W) images with H and W multiples "
                             f"of PATCH_SIZE={self.patch_size}, got {tuple(x.shape)}")
        names = list(out_feat_keys) if out_feat_keys else ["lastCLS"]
        check_feature_names(names, self._feature_names, "vision_transformer")
        needed = sorted({i for n in names for i in self._block_index(n)})
        outs = self.forward_intermediates(x, indices=needed, norm=True, stop_early=True,
                                          output_fmt="NLC", intermediates_only=True,
                                          return_prefix_tokens=True)
        tokens = {i: torch.cat([prefix, patches], dim=1) for i, (patches, prefix) in zip(needed, outs)}
        grid = (x.shape[2] // self.patch_size, x.shape[3] // self.patch_size)
        return [self._select(name, tokens, grid) for name in names]

    def _select(self, name: str, tokens: Dict[int, torch.Tensor],
                grid: Tuple[int, int]) -> torch.Tensor:
        blocks = self._block_index(name)
        if name.startswith("concatCLS"):
            return torch.cat([tokens[i][:, 0] for i in blocks], dim=-1)
        if name.startswith("concatBLK"):
            return torch.cat([tokens[i] for i in blocks], dim=-1)
        t = tokens[blocks[0]]
        if name == "lastMAP":
            return t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)
        if name == "lastBLK":
            return t
        return t[:, 0]  # lastCLS, blkCLS<i>
