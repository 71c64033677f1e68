"""More of VISSL's augmentations, under VISSL's names: solarize, PIRL's photometric set, per-crop
random application (BYOL), RGB -> Lab for colorization, and torchvision's RandomGrayscale.

All randomness comes from torch's default generator, which
:class:`sslcore.data.dataset.SSLDataset` seeds per sample from (seed, epoch, index)
(:mod:`sslcore.data.seeding`), so a sample's views do not depend on workers or processes.

Papers:
    - [0] BYOL, Grill et al. 2020, https://arxiv.org/abs/2006.07733 (solarization, per-view
      augmentation probabilities)
    - [1] PIRL, Misra and van der Maaten 2019, https://arxiv.org/abs/1912.01991 (photometric)
    - [2] Colorization, Zhang et al. 2016, https://arxiv.org/abs/1603.08511 (Lab input)
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, ImageEnhance, ImageOps

from sslcore.data.transforms import TRANSFORMS, build_transform

TRANSFORMS.register("RandomGrayscale")(T.RandomGrayscale)


def _uniform(low: float, high: float) -> float:
    """A float drawn uniformly in [low, high) from torch's default generator."""
    return low + (high - low) * torch.rand(()).item()


def _randint(low: int, high: int) -> int:
    """An int drawn uniformly in [low, high] (both ends included) from torch's generator."""
    return int(torch.randint(low, high + 1, ()).item())


def _check_prob(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    return float(value)


@TRANSFORMS.register("ImgPilRandomSolarize")
class ImgPilRandomSolarize:
    """With probability ``prob``, solarize: invert every pixel value >= a threshold.

    As VISSL, the threshold is drawn uniformly from the integers 0..256 (256 leaves the image
    unchanged, 0 inverts it all); ``threshold`` fixes it (BYOL uses 128).

    Paper: [0] BYOL, https://arxiv.org/abs/2006.07733

    Args:
        prob: probability of solarizing, in [0, 1] (VISSL's default 0.66).
        p: VISSL's alternative spelling of ``prob``; give one of them.
        threshold: fixed threshold in [0, 256], or None to draw it.

    Raises:
        ValueError: probability outside [0, 1], threshold outside [0, 256], or both prob and p.

    Example:
        >>> ImgPilRandomSolarize(prob=0.2)(image)  # PIL image, same size and mode
    """

    def __init__(self, prob: Optional[float] = None, *, p: Optional[float] = None,
                 threshold: Optional[int] = None) -> None:
        if prob is not None and p is not None:
            raise ValueError("ImgPilRandomSolarize: give 'prob' or 'p', not both")
        self.prob = _check_prob("ImgPilRandomSolarize prob", 0.66 if prob is None and p is None
                                else (prob if prob is not None else p))
        if threshold is not None and not 0 <= int(threshold) <= 256:
            raise ValueError(f"ImgPilRandomSolarize threshold must be in [0, 256], got {threshold}")
        self.threshold = None if threshold is None else int(threshold)

    def __call__(self, image: Image.Image) -> Image.Image:
        """Solarize ``image`` (RGB or L PIL image) or return it unchanged."""
        if torch.rand(()).item() >= self.prob:
            return image
        threshold = self.threshold if self.threshold is not None else _randint(0, 256)
        return ImageOps.solarize(image, threshold)

    def __repr__(self) -> str:
        return f"ImgPilRandomSolarize(prob={self.prob}, threshold={self.threshold})"


@TRANSFORMS.register("ImgPilRandomPhotometric")
class ImgPilRandomPhotometric:
    """With probability ``p``, PIRL's photometric chain, in this order: posterize to a random
    4..8 bits, sharpness with a factor in [0.1, 1.9), solarize at a threshold in 0..256, then
    autocontrast.

    Paper: [1] PIRL, https://arxiv.org/abs/1912.01991

    Args:
        p: probability of applying the chain, in [0, 1] (VISSL's default 0.66).

    Raises:
        ValueError: if ``p`` is outside [0, 1].
    """

    def __init__(self, p: float = 0.66) -> None:
        self.p = _check_prob("ImgPilRandomPhotometric p", p)

    def __call__(self, image: Image.Image) -> Image.Image:
        """Transform an RGB or L PIL image (same size and mode) or return it unchanged."""
        if torch.rand(()).item() >= self.p:
            return image
        image = ImageOps.posterize(image, _randint(4, 8))
        image = ImageEnhance.Sharpness(image).enhance(_uniform(0.1, 1.9))
        image = ImageOps.solarize(image, _randint(0, 256))
        return ImageOps.autocontrast(image)

    def __repr__(self) -> str:
        return f"ImgPilRandomPhotometric(p={self.p})"


@TRANSFORMS.register("ImgPilMultiCropRandomApply")
class ImgPilMultiCropRandomApply:
    """Apply a chain of transforms to view v with probability ``prob[v]`` (BYOL's asymmetric
    augmentations: blur with p = [1.0, 0.1], solarize with p = [0.0, 0.2]).

    Works on the whole sample: it needs each view's position (``transforms_whole_sample``).

    Paper: [0] BYOL, https://arxiv.org/abs/2006.07733

    Args:
        transforms: the chain, TRANSFORMS entries such as ``[{name: ImgPilRandomSolarize,
            prob: 1.0}]``.
        prob: one probability per view, in [0, 1].

    Raises:
        ValueError: an empty ``prob``, a probability outside [0, 1], or a bad transform entry.
        KeyError: an unknown transform name.

    Example:
        >>> t = ImgPilMultiCropRandomApply(transforms=[{"name": "ImgPilGaussianBlur", "p": 1.0}],
        ...                                prob=[1.0, 0.1])
        >>> t([view0, view1])  # blurred view0, view1 blurred one time in ten
    """

    transforms_whole_sample = True  # needs view positions: SampleTransform passes the sample

    def __init__(self, transforms: Sequence[Mapping[str, Any]], prob: Sequence[float]) -> None:
        if not prob:
            raise ValueError("ImgPilMultiCropRandomApply needs 'prob': one probability per view")
        self.prob = [_check_prob("ImgPilMultiCropRandomApply prob", v) for v in prob]
        self.chain = [build_transform(spec) for spec in transforms]

    def _apply(self, view: Any, position: int) -> Any:
        if torch.rand(()).item() >= self.prob[position]:
            return view
        for transform in self.chain:
            view = transform(view)
        return view

    def __call__(self, views: List[Any]) -> List[Any]:
        """Transform a list of V views (V == len(prob)), view v with probability prob[v].

        Raises:
            ValueError: if ``views`` is not a list of len(prob) views.
        """
        if not isinstance(views, list) or len(views) != len(self.prob):
            count = len(views) if isinstance(views, list) else "one"
            raise ValueError(f"ImgPilMultiCropRandomApply has {len(self.prob)} probabilities but got "
                             f"{count} view(s); give one probability per view in 'prob'")
        return [self._apply(view, v) for v, view in enumerate(views)]

    def apply_to_sample(self, sample: Dict[str, Any],
                        indices: Optional[FrozenSet[int]] = None) -> Dict[str, Any]:
        """Transform the views of a VISSL sample (labels and indices are unchanged).

        Args:
            sample: ``{"data": [V views], ...}`` with V == len(prob).
            indices: views left out of this set are not touched (their random draw still happens,
                so other views get the same result either way); None for all.

        Returns:
            A new sample dict with the transformed views.

        Raises:
            ValueError: if V != len(prob).
        """
        views = list(sample["data"])
        new = self(views)
        out = dict(sample)
        out["data"] = [n if indices is None or v in indices else old
                       for v, (old, n) in enumerate(zip(views, new))]
        return out

    def __repr__(self) -> str:
        return f"ImgPilMultiCropRandomApply(prob={self.prob}, transforms={self.chain})"


# sRGB (D65) -> XYZ, and the D65 white point; the values OpenCV's cvtColor uses
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]], dtype=np.float64)
_WHITE = np.array([0.950456, 1.0, 1.088754], dtype=np.float64)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Convert sRGB pixels to CIE L*a*b* (D65).

    Args:
        rgb: (..., 3) uint8 or float array; uint8 in [0, 255], floats in [0, 1].

    Returns:
        (..., 3) float32 array: L in [0, 100], a and b roughly in [-128, 127].

    Example:
        >>> rgb_to_lab(np.array([255, 0, 0], dtype=np.uint8)).round(1)  # pure red
        array([53.2, 80.1, 67.2], dtype=float32)
    """
    c = rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float64)
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    eps = 0.008856
    f = np.where(xyz > eps, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    y = xyz[..., 1]
    lightness = np.where(y > eps, 116.0 * f[..., 1] - 16.0, 903.3 * y)
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([lightness, a, b], axis=-1).astype(np.float32)


@TRANSFORMS.register("ImgPil2LabTensor")
class ImgPil2LabTensor:
    """PIL image -> (3, H, W) float Lab tensor, VISSL's colorization input.

    Channels, as VISSL produces them: L - 50 (so [-50, 50]), a and b (about [-128, 127]).
    VISSL computes them with OpenCV's 8-bit conversion, which rounds each channel to an integer
    step (L in steps of 100/255); here they are exact floats.

    Paper: [2] Colorization, https://arxiv.org/abs/1603.08511
    """

    def __call__(self, image: Union[Image.Image, np.ndarray]) -> torch.Tensor:
        """Convert an image (any PIL mode, converted to RGB first; or an (H, W, 3) uint8 array).

        Returns:
            (3, H, W) float32 tensor.
        """
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"ImgPil2LabTensor expects an RGB image, got shape {image.shape}")
        lab = rgb_to_lab(image)
        lab[..., 0] -= 50.0
        return torch.from_numpy(np.ascontiguousarray(lab.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return "ImgPil2LabTensor()"
