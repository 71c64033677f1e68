"""RotNet's rotation transform: rotated copies of each view, labelled with the rotation id.

- [0] RotNet, Gidaris, Singh & Komodakis 2018, https://arxiv.org/abs/1803.07728

``ImgRotatePil`` (VISSL's name and arguments) replaces a view by ``num_rotations_per_img``
copies rotated counter-clockwise by ``360 * k / num_angles`` degrees and sets each copy's label
to ``k``. It sets labels, so it works on the whole sample (``transforms_whole_sample``): the
sample transform hands it the sample dict instead of one image. Use it first in TRANSFORMS, and
collate with ``simclr_collator`` when it makes more than one copy (one row and label per view).
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Optional, Tuple, Union

import torch
from PIL import Image

from sslcore.data.transforms import TRANSFORMS

# counter-clockwise quarter turns as exact pixel permutations (what np.rot90 computes)
_QUARTER_TURNS = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180,
                  3: Image.Transpose.ROTATE_270}

View = Union[Image.Image, torch.Tensor]


def rotate_view(view: View, degrees: float) -> View:
    """Rotate an image counter-clockwise by ``degrees``.

    Multiples of 90 are exact pixel permutations (``np.rot90``; H and W swap for quarter
    turns); other angles use PIL's nearest-neighbour rotation inside the same canvas.

    Args:
        view: a PIL image, or a (C, H, W) tensor (multiples of 90 only).
        degrees: the angle in degrees.

    Returns:
        The rotated view, of the same type.

    Raises:
        ValueError: a tensor with an angle that is not a multiple of 90.
    """
    quarter = degrees / 90.0
    if quarter == int(quarter):
        turns = int(quarter) % 4
        if isinstance(view, torch.Tensor):
            return torch.rot90(view, turns, dims=(-2, -1)) if turns else view
        return view.transpose(_QUARTER_TURNS[turns]) if turns else view.copy()
    if isinstance(view, torch.Tensor):
        raise ValueError(f"ImgRotatePil rotates tensors by multiples of 90 degrees only, got "
                         f"{degrees}; put it before ToTensor")
    return view.rotate(degrees, resample=Image.Resampling.NEAREST)


@TRANSFORMS.register("ImgRotatePil")
class ImgRotatePil:
    """Rotated copies of a view with their rotation ids as labels (RotNet).

    Paper: [0] RotNet, Gidaris et al. 2018, https://arxiv.org/abs/1803.07728

    The angles are ``360 * k / num_angles`` for k = 0..num_angles-1. With
    ``num_rotations_per_img == num_angles`` every angle is used, in order k = 0, 1, ... (the
    paper's setting: all four rotations of an image in one batch); with fewer, that many
    distinct angles are drawn at random (one random angle per image is VISSL's default).

    Args:
        num_angles: K >= 2, the number of rotation classes.
        num_rotations_per_img: R in [1, K], rotated copies made from each view.

    Raises:
        ValueError: K < 2 or R outside [1, K].

    Example:
        >>> views, labels = ImgRotatePil(num_angles=4, num_rotations_per_img=4)(image)
        >>> labels
        [0, 1, 2, 3]
    """

    transforms_whole_sample = True  # it writes labels: SampleTransform passes the sample dict

    def __init__(self, num_angles: int = 4, num_rotations_per_img: int = 1) -> None:
        if num_angles < 2 or not 1 <= num_rotations_per_img <= num_angles:
            raise ValueError(
                f"ImgRotatePil needs num_angles >= 2 and 1 <= num_rotations_per_img <= num_angles, "
                f"got num_angles={num_angles}, num_rotations_per_img={num_rotations_per_img}")
        self.num_angles = int(num_angles)
        self.num_rotations_per_img = int(num_rotations_per_img)
        self.angles = [360.0 * k / self.num_angles for k in range(self.num_angles)]

    def __repr__(self) -> str:
        return (f"ImgRotatePil(num_angles={self.num_angles}, "
                f"num_rotations_per_img={self.num_rotations_per_img})")

    def choose_rotations(self) -> List[int]:
        """The rotation ids for one view: all in order, or R distinct ones drawn with torch's RNG."""
        if self.num_rotations_per_img == self.num_angles:
            return list(range(self.num_angles))
        return torch.randperm(self.num_angles)[: self.num_rotations_per_img].tolist()

    def __call__(self, view: View) -> Tuple[List[View], List[int]]:
        """Rotate one view.

        Args:
            view: a PIL image or a (C, H, W) tensor.

        Returns:
            ``(R rotated views, R rotation ids)``.
        """
        ids = self.choose_rotations()
        return [rotate_view(view, self.angles[k]) for k in ids], ids

    def apply_to_sample(self, sample: Dict[str, Any],
                        indices: Optional[FrozenSet[int]] = None) -> Dict[str, Any]:
        """Replace each selected view by its rotated copies and their labels.

        Args:
            sample: VISSL sample ``{"data": [V views], "label", "data_idx", "data_valid": [V]}``.
            indices: the views to rotate (the TRANSFORMS entry's ``indices``); None for all.

        Returns:
            A new sample with V' = V + (R - 1) * (rotated views) views; ``label`` holds the
            rotation ids of rotated views (others keep theirs), ``data_idx``/``data_valid`` are
            copied to every new view.
        """
        out: Dict[str, Any] = dict(sample)
        keys = [k for k in ("label", "data_idx", "data_valid") if k in sample]
        out["data"] = []
        out.update({k: [] for k in keys})
        for v, view in enumerate(sample["data"]):
            if indices is not None and v not in indices:
                out["data"].append(view)
                for k in keys:
                    out[k].append(sample[k][v])
                continue
            views, ids = self(view)
            out["data"] += views
            for k in keys:
                out[k] += list(ids) if k == "label" else [sample[k][v]] * len(views)
        return out
