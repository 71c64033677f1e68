"""Global image descriptors from a trunk's spatial feature map: GeM, R-MAC, PCA whitening.

- [0] Radenović, Tolias & Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation"
  (GeM pooling), TPAMI 2018, https://arxiv.org/abs/1711.02512
- [1] Tolias, Sicre & Jégou, "Particular object retrieval with integral max-pooling of CNN
  activations" (R-MAC), ICLR 2016, https://arxiv.org/abs/1511.05879
- [2] Jégou & Chum, "Negative evidences and co-occurrences in image retrieval: the benefit of
  PCA and whitening", ECCV 2012 (PCA whitening learned on a separate image set)

A descriptor is computed from a (B, C, H, W) activation map of one trunk layer (e.g. ``res5``)
and L2-normalised; PCA whitening, when used, is fitted on descriptors of images that are
neither queries nor database, applied, and followed by a second L2 normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

DESCRIPTORS = ("gem", "rmac")
_EPS = 1e-6


def _check_map(features: torch.Tensor) -> None:
    if features.ndim != 4:
        raise ValueError(f"descriptors need a spatial feature map (B, C, H, W), got shape "
                         f"{tuple(features.shape)}; pick a convolutional layer such as res4 or res5")


def l2_normalize(x: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Rows divided by their L2 norm: (B, D) -> (B, D); an all-zero row stays zero."""
    return x / (x.norm(dim=1, keepdim=True) + eps)


def gem_pool(features: torch.Tensor, p: float = 3.0, eps: float = _EPS) -> torch.Tensor:
    """Generalized-mean (GeM) pooling of each channel over the spatial positions [0].

    ``f_c = (mean_{h,w} max(x_chw, eps) ** p) ** (1 / p)``: p = 1 is average pooling and
    p -> infinity tends to max pooling. Not normalised (see :func:`gem_descriptor`).

    Args:
        features: (B, C, H, W) float activations (after ReLU they are >= 0).
        p: the pooling exponent, > 0 (3 in [0]).
        eps: values are clamped to at least eps so the power is defined.

    Returns:
        (B, C) float.

    Raises:
        ValueError: not a 4-D map, or p <= 0.
    """
    _check_map(features)
    if not p > 0:
        raise ValueError(f"GeM exponent p must be > 0, got {p}")
    return features.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def gem_descriptor(features: torch.Tensor, p: float = 3.0) -> torch.Tensor:
    """L2-normalised GeM descriptor: (B, C, H, W) -> (B, C) float with unit rows ([0])."""
    return l2_normalize(gem_pool(features, p))


def _region_starts(length: int, side: int, count: int) -> List[int]:
    """``count`` start offsets of windows of ``side`` spread evenly over ``length``."""
    if count == 1:
        return [(length - side) // 2]
    step = (length - side) / (count - 1)
    return [int(math.floor(i * step)) for i in range(count)]


def _extra_long_side_regions(height: int, width: int, overlap: float) -> int:
    """How many more regions the long side gets than the short one: the count whose level-1
    square regions (side = short side) overlap closest to ``overlap`` ([1], section 3)."""
    short, long_ = min(height, width), max(height, width)
    if short == long_:
        return 0
    best, best_gap = 1, float("inf")
    for extra in range(1, 7):
        stride = (long_ - short) / extra
        gap = abs((1.0 - stride / short) - overlap)
        if gap < best_gap:
            best, best_gap = extra, gap
    return best


def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> List[Tuple[int, int, int]]:
    """The R-MAC region grid of an H x W map [1]: square regions at ``levels`` scales.

    At level l = 1..L the regions are squares of side ``floor(2 * min(H, W) / (l + 1))``; the
    short side holds l of them and the long side l + m, evenly spaced, where m (fixed over
    levels) makes consecutive level-1 regions overlap as close to ``overlap`` as possible.
    Levels whose side would be 0 are skipped.

    Args:
        height: H of the feature map, >= 1.
        width: W of the feature map, >= 1.
        levels: L, >= 1 (3 in [1]).
        overlap: wanted overlap of consecutive regions, in [0, 1) (0.4 in [1]).

    Returns:
        ``[(top, left, side), ...]`` in level order, row-major within a level.

    Raises:
        ValueError: a non-positive size or L, or overlap outside [0, 1).
    """
    if height < 1 or width < 1 or levels < 1:
        raise ValueError(f"need H, W, levels >= 1, got {height}, {width}, {levels}")
    if not 0 <= overlap < 1:
        raise ValueError(f"R-MAC overlap must be in [0, 1), got {overlap}")
    extra = _extra_long_side_regions(height, width, overlap)
    extra_h, extra_w = (extra, 0) if height > width else (0, extra)
    regions = []
    for level in range(1, levels + 1):
        side = int(math.floor(2 * min(height, width) / (level + 1)))
        if side < 1:
            continue
        for top in _region_starts(height, side, level + extra_h):
            for left in _region_starts(width, side, level + extra_w):
                regions.append((top, left, side))
    return regions


def rmac_descriptor(features: torch.Tensor, levels: int = 3, overlap: float = 0.4) -> torch.Tensor:
    """R-MAC: sum of the L2-normalised max-pooled regions of :func:`rmac_regions`, L2-normalised [1].

    Args:
        features: (B, C, H, W) float activations.
        levels: L of the region grid.
        overlap: wanted overlap of consecutive regions.

    Returns:
        (B, C) float with unit rows.

    Raises:
        ValueError: not a 4-D map, or a bad grid parameter.
    """
    _check_map(features)
    total = torch.zeros(features.shape[:2], dtype=features.dtype, device=features.device)
    for top, left, side in rmac_regions(features.shape[2], features.shape[3], levels, overlap):
        region = features[:, :, top:top + side, left:left + side]
        total = total + l2_normalize(region.amax(dim=(2, 3)))
    return l2_normalize(total)


def describe(features: torch.Tensor, descriptor: str, *, p: float = 3.0, levels: int = 3) -> torch.Tensor:
    """The named descriptor (``"gem"`` or ``"rmac"``) of a (B, C, H, W) map: (B, C), unit rows.

    Raises:
        ValueError: unknown descriptor name, or as :func:`gem_pool` / :func:`rmac_regions`.
    """
    if descriptor == "gem":
        return gem_descriptor(features, p)
    if descriptor == "rmac":
        return rmac_descriptor(features, levels)
    raise ValueError(f"descriptor {descriptor!r} is unknown; use one of {list(DESCRIPTORS)}")


@dataclass
class PCAWhitening:
    """A learned PCA whitening ``x -> diag(s + eps) ** -1/2 U^T (x - mean)`` [2].

    Attributes:
        mean: (D,) float64 mean of the training descriptors.
        projection: (D', D) float64, rows = eigenvectors of the covariance (largest eigenvalue
            first) divided by the square root of their eigenvalue.
        num_train: how many descriptors it was fitted on.
    """

    mean: np.ndarray
    projection: np.ndarray
    num_train: int

    def apply(self, descriptors: np.ndarray) -> np.ndarray:
        """Whiten then L2-normalise: (N, D) float -> (N, D') float32 with unit rows.

        Raises:
            ValueError: D differs from the fitted dimension.
        """
        x = np.asarray(descriptors, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.mean):
            raise ValueError(f"descriptors {x.shape} do not match the whitening's D={len(self.mean)}")
        out = (x - self.mean) @ self.projection.T
        return (out / (np.linalg.norm(out, axis=1, keepdims=True) + _EPS)).astype(np.float32)


def fit_pca_whitening(descriptors: np.ndarray, *, dims: Optional[int] = None,
                      eps: float = 1e-6) -> PCAWhitening:
    """Learn PCA whitening on descriptors of a separate image set [2].

    Never fit it on the database or the queries: the benchmark would see its own test data.

    Args:
        descriptors: (N, D) float training descriptors, N >= 2.
        dims: keep the D' <= D leading components (None keeps all D).
        eps: added to every eigenvalue, relative to the largest (eps * s_max), so near-null
            directions are not blown up when N <= D.

    Returns:
        A :class:`PCAWhitening`.

    Raises:
        ValueError: fewer than 2 rows, non-finite values, or dims outside [1, D].
    """
    x = np.asarray(descriptors, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2 or not np.isfinite(x).all():
        raise ValueError(f"whitening needs finite (N, D) descriptors with N >= 2, got {x.shape}; "
                         "give the whitening split more images")
    if dims is not None and not 1 <= dims <= x.shape[1]:
        raise ValueError(f"whitening dims={dims} must be in [1, {x.shape[1]}]")
    mean = x.mean(axis=0)
    centred = x - mean
    eigvals, eigvecs = np.linalg.eigh(centred.T @ centred / len(x))
    order = np.argsort(eigvals)[::-1][: dims or x.shape[1]]
    scale = np.maximum(eigvals[order], 0.0) + eps * max(float(eigvals.max()), 1e-12)
    projection = eigvecs[:, order].T / np.sqrt(scale)[:, None]
    return PCAWhitening(mean=mean, projection=projection, num_train=len(x))
