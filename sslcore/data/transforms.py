"""Image augmentations by name, applied to every view of a sample (VISSL's ``TRANSFORMS``).

A config entry names a transform and its keyword arguments; ``indices`` (optional) limits it to
some views::

    TRANSFORMS:
      - {name: ImgReplicatePil, num_times: 2}                    # 1 image -> 2 views
      - {name: RandomResizedCrop, size: 28, scale: [0.2, 1.0]}
      - {name: ImgPilColorDistortion, strength: 0.5}
      - {name: ImgPilGaussianBlur, p: 0.5, radius_min: 0.1, radius_max: 2.0, indices: [0]}
      - {name: ToTensor}
      - {name: Normalize, mean: [0.286, 0.286, 0.286], std: [0.353, 0.353, 0.353]}

Names are looked up in :data:`TRANSFORMS` first, then in ``torchvision.transforms`` (any class
by its own name). A transform that returns a list turns one view into several; the view's
label, index and validity are copied to each new view.

Randomness comes from torch's default generator (and Python ``random``), which
:class:`sslcore.data.dataset.SSLDataset` seeds per sample from (seed, epoch, index).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
import torchvision.transforms as T
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image, ImageFilter

from sslcore.config.schema import Key, declare
from sslcore.registry import Registry, close_matches

for _split in ("TRAIN", "TEST"):
    declare(f"DATA.{_split}", {
        "TRANSFORMS": Key([], list, "augmentations applied to every view, in order: a list of "
                          "{name: <transform>, <kwargs>..., indices: [views] (optional)}; names from "
                          "sslcore.data.transforms.TRANSFORMS or any torchvision.transforms class"),
    })

TRANSFORMS: Registry[Callable[..., Callable]] = Registry("transform")
for _name in ("RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"):
    TRANSFORMS.register(_name)(getattr(T, _name))


@TRANSFORMS.register("ImgReplicatePil")
class ImgReplicatePil:
    """Replicate one image into ``num_times`` views (the two views of SimCLR start here).

    Args:
        num_times: how many copies, >= 1.

    Raises:
        ValueError: if ``num_times`` < 1.

    Example:
        >>> ImgReplicatePil(num_times=2)(image)  # [image, image]
    """

    def __init__(self, num_times: int = 2) -> None:
        if num_times < 1:
            raise ValueError(f"ImgReplicatePil num_times must be >= 1, got {num_times}")
        self.num_times = num_times

    def __call__(self, image: Image.Image) -> List[Image.Image]:
        """Return ``num_times`` copies of ``image`` (independent objects)."""
        return [image.copy() for _ in range(self.num_times)]


@TRANSFORMS.register("ImgPilColorDistortion")
class ImgPilColorDistortion:
    """SimCLR's color distortion (Chen et al., 2020, https://arxiv.org/abs/2002.05709, App. A).

    With probability 0.8, ColorJitter(brightness=0.8s, contrast=0.8s, saturation=0.8s, hue=0.2s)
    in random order; then, with probability 0.2, grayscale (kept as 3 channels).

    Args:
        strength: s; SimCLR uses 1.0 on ImageNet and 0.5 on CIFAR-10. Must be >= 0 and hue 0.2s <= 0.5.

    Raises:
        ValueError: if ``strength`` is outside [0, 2.5].
    """

    def __init__(self, strength: float = 1.0) -> None:
        if not 0.0 <= strength <= 2.5:
            raise ValueError(
                f"ImgPilColorDistortion strength must be in [0, 2.5] (hue 0.2*s <= 0.5), got {strength}"
            )
        self.strength = strength
        jitter = T.ColorJitter(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)
        self.transform = T.Compose([T.RandomApply([jitter], p=0.8), T.RandomGrayscale(p=0.2)])

    def __call__(self, image: Image.Image) -> Image.Image:
        """Distort a PIL image (RGB in, RGB out, same size)."""
        return self.transform(image)


@TRANSFORMS.register("ImgPilGaussianBlur")
class ImgPilGaussianBlur:
    """Gaussian blur with a random radius, applied with probability ``p`` (SimCLR / BYOL style).

    Args:
        p: probability of blurring, in [0, 1].
        radius_min: smallest blur radius (standard deviation) in pixels, >= 0.
        radius_max: largest radius in pixels, >= radius_min; drawn uniformly in between.

    Raises:
        ValueError: if ``p`` is outside [0, 1] or the radii are not 0 <= min <= max.
    """

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        if not 0.0 <= p <= 1.0 or not 0.0 <= radius_min <= radius_max:
            raise ValueError(
                f"ImgPilGaussianBlur needs 0 <= p <= 1 and 0 <= radius_min <= radius_max, got "
                f"p={p}, radius_min={radius_min}, radius_max={radius_max}"
            )
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, image: Image.Image) -> Image.Image:
        """Blur a PIL image or return it unchanged (same size and mode)."""
        if torch.rand(()).item() >= self.p:
            return image
        radius = self.radius_min + (self.radius_max - self.radius_min) * torch.rand(()).item()
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


@TRANSFORMS.register("ImgPilToMultiCrop")
class ImgPilToMultiCrop:
    """Multi-crop (SwAV, Caron et al., 2020, https://arxiv.org/abs/2006.09882): one image ->
    ``sum(num_crops)`` random resized crops at several resolutions.

    Args:
        total_num_crops: sum of ``num_crops`` (checked, as in VISSL's configs).
        num_crops: crops per resolution, e.g. [2, 6].
        size_crops: crop side in pixels per resolution, e.g. [224, 96].
        crop_scales: [min, max] area fraction per resolution, e.g. [[0.14, 1], [0.05, 0.14]].

    Raises:
        ValueError: if the lists differ in length or ``total_num_crops`` != sum(num_crops).
    """

    def __init__(self, total_num_crops: int, num_crops: Sequence[int], size_crops: Sequence[int],
                 crop_scales: Sequence[Sequence[float]]) -> None:
        if not len(num_crops) == len(size_crops) == len(crop_scales) or sum(num_crops) != total_num_crops:
            raise ValueError(
                "ImgPilToMultiCrop: num_crops, size_crops and crop_scales need one entry per resolution "
                f"and total_num_crops == sum(num_crops); got {total_num_crops}, {list(num_crops)}, "
                f"{list(size_crops)}, {list(crop_scales)}"
            )
        self.crops = [T.RandomResizedCrop(size, scale=tuple(scale))
                      for n, size, scale in zip(num_crops, size_crops, crop_scales) for _ in range(n)]

    def __call__(self, image: Image.Image) -> List[Image.Image]:
        """Return the crops, high resolutions first."""
        return [crop(image) for crop in self.crops]


def get_transform_class(name: str) -> Callable[..., Callable]:
    """Resolve a transform name: :data:`TRANSFORMS`, else ``torchvision.transforms.<name>``.

    Raises:
        KeyError: if neither has it; lists the closest names of both.
    """
    if name in TRANSFORMS:
        return TRANSFORMS.get(name)
    candidate = getattr(T, name, None)
    if inspect.isclass(candidate):
        return candidate
    known = TRANSFORMS.names() + [n for n in dir(T) if inspect.isclass(getattr(T, n))]
    hint = close_matches(name, sorted(set(known)), n=5)
    raise KeyError(
        f"unknown transform '{name}'." + (f" Did you mean: {', '.join(hint)}?" if hint else "")
        + " Use a name from sslcore.data.transforms.TRANSFORMS or a torchvision.transforms class."
    )


def build_transform(spec: Mapping[str, Any]) -> Callable:
    """Instantiate one transform from its config entry (``name`` + keyword arguments).

    Raises:
        ValueError: if the entry has no ``name`` or the arguments do not fit the constructor
            (the message lists the accepted ones).
        KeyError: unknown name.
    """
    spec = dict(spec)
    name = spec.pop("name", None)
    spec.pop("indices", None)
    if not isinstance(name, str):
        raise ValueError(
            f"transform entry {spec} has no 'name'; write e.g. {{name: RandomResizedCrop, size: 224}}"
        )
    cls = get_transform_class(name)
    try:
        return cls(**spec)
    except TypeError as exc:
        try:
            accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
        except (TypeError, ValueError):
            accepted = []
        raise ValueError(
            f"transform {name}: bad arguments {sorted(spec)} ({exc}); accepted: {accepted}"
        ) from exc


class SampleTransform:
    """Apply a list of transforms to every view of a VISSL sample dict.

    Args:
        steps: ``(transform, indices)`` pairs; ``indices`` None means every view.

    Example:
        >>> t = build_transforms([{"name": "ImgReplicatePil", "num_times": 2}, {"name": "ToTensor"}])
        >>> t({"data": [img], "label": [3], "data_idx": [7], "data_valid": [True]})["label"]
        [3, 3]
    """

    _PER_VIEW_KEYS = ("label", "data_idx", "data_valid")

    def __init__(self, steps: Sequence[tuple]) -> None:
        self.steps = list(steps)

    def __call__(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        """Transform ``sample["data"]`` (list of V views); per-view keys follow new views.

        Returns:
            A new sample dict; ``data`` holds the transformed views (V' >= V when a transform
            returns lists), and ``label``, ``data_idx``, ``data_valid`` have V' entries.
        """
        out = dict(sample)
        for transform, indices in self.steps:
            if getattr(transform, "transforms_whole_sample", False):  # sets labels (ImgRotatePil)
                out = transform.apply_to_sample(out, indices)
                continue
            views: List[Any] = []
            per_view: Dict[str, List[Any]] = {k: [] for k in self._PER_VIEW_KEYS if k in out}
            for v, view in enumerate(out["data"]):
                result = transform(view) if indices is None or v in indices else view
                results = result if isinstance(result, list) else [result]
                views += results
                for key in per_view:
                    per_view[key] += [out[key][v]] * len(results)
            out["data"] = views
            out.update(per_view)
        return out

    def __repr__(self) -> str:
        return "SampleTransform(" + ", ".join(repr(t) for t, _ in self.steps) + ")"


def build_transforms(transform_cfgs: Optional[Sequence[Mapping[str, Any]]]) -> SampleTransform:
    """Build the sample transform for a ``TRANSFORMS`` config list.

    Args:
        transform_cfgs: list of ``{name, **kwargs, indices?}`` dicts (OmegaConf lists accepted);
            empty or None gives the identity.

    Returns:
        A callable ``sample dict -> sample dict`` (see :class:`SampleTransform`).

    Raises:
        KeyError: unknown transform name (lists close names).
        ValueError: malformed entry, bad ``indices`` or bad arguments.
    """
    if isinstance(transform_cfgs, (ListConfig, DictConfig)):
        transform_cfgs = OmegaConf.to_container(transform_cfgs, resolve=True)
    steps = []
    for spec in transform_cfgs or []:
        if not isinstance(spec, Mapping):
            raise ValueError(f"each TRANSFORMS entry must be a mapping with a 'name', got {spec!r}")
        indices = spec.get("indices")
        if indices is not None and (not isinstance(indices, (list, tuple))
                                    or not all(isinstance(i, int) and i >= 0 for i in indices)):
            raise ValueError(
                f"transform {spec.get('name')}: 'indices' must be a list of view numbers >= 0, got "
                f"{indices!r}"
            )
        steps.append((build_transform(spec), None if indices is None else frozenset(indices)))
    return SampleTransform(steps)

