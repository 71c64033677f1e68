"""VISSL's ``siamese_concat_view`` head: join the features of an image's N towers into one row.

Jigsaw and PIRL run every patch of an image through the same trunk (the "siamese towers");
this head turns the (B*N, C) per-patch features, sample-major, into (B, N*C) per-image features
for the classifier (Jigsaw) or projection (PIRL) that follows.

Papers:
    - [0] Jigsaw, Noroozi & Favaro 2016, https://arxiv.org/abs/1603.09246
    - [1] PIRL, Misra & van der Maaten 2020, https://arxiv.org/abs/1912.01991
"""

from __future__ import annotations

import torch
from torch import nn

from sslcore.models.heads.registry import HEADS


@HEADS.register("siamese_concat_view")
class SiameseConcatView(nn.Module):
    """Reshape (B*N, C, ...) tower features to (B, N*C): row b holds towers 0..N-1 of sample b.

    Papers: [0] https://arxiv.org/abs/1603.09246, [1] https://arxiv.org/abs/1912.01991

    Args:
        num_towers: N, towers (patches) per sample, >= 1.

    Raises:
        ValueError: if ``num_towers`` < 1.

    Example:
        >>> SiameseConcatView(num_towers=9)(torch.randn(4 * 9, 128)).shape
        torch.Size([4, 1152])
    """

    def __init__(self, num_towers: int) -> None:
        super().__init__()
        if num_towers < 1:
            raise ValueError(f"siamese_concat_view head: num_towers must be >= 1, got {num_towers}")
        self.num_towers = int(num_towers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate each sample's tower features.

        Args:
            x: (B*N, C) or (B*N, C, 1, 1) float features, sample-major (the rows of sample b are
                b*N .. b*N + N-1, as ``siamese_collator`` / ``patch_and_image_collator`` lay them out).

        Returns:
            (B, N * C') with C' the features per row after flattening.

        Raises:
            ValueError: if the number of rows is not a multiple of ``num_towers``.
        """
        rows = x.shape[0]
        if x.ndim < 2 or rows % self.num_towers:
            raise ValueError(f"siamese_concat_view head: {tuple(x.shape)} input does not hold "
                             f"{self.num_towers} towers per sample ((B*N, C) rows expected)")
        return x.reshape(rows // self.num_towers, -1)

    def extra_repr(self) -> str:
        return f"num_towers={self.num_towers}"
