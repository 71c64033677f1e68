"""Patch-based pretext data: Jigsaw puzzles and PIRL's image + patches views.

Transforms (registered in :data:`sslcore.data.transforms.TRANSFORMS`, VISSL names):

- ``ImgPatchesFromTensor``: a (C, H, W) tensor -> a (N, C, h, w) stack of N = n x n jittered
  grid patches (one view; the stack travels as one tensor).
- ``ShuffleImgPatches``: a (N, C, h, w) stack -> the patches in the order of one permutation
  drawn from a fixed set; the sample's label becomes that permutation's index (the Jigsaw label).
- ``ImgPilToPatchesAndImage``: one PIL image -> [image crop, N patches], N + 1 views (PIRL).

Collators (registered in :data:`sslcore.data.collators.COLLATORS`):

- ``siamese_collator`` (Jigsaw): stacks become one (B*N, C, h, w) tensor, sample-major.
- ``patch_and_image_collator`` (PIRL): ``data = [images (B, C, H, W), patches (B*N, C, h, w)]``
  and ``input_names = ["images", "patches"]``, the names MODEL.MULTI_INPUT_HEAD_MAPPING uses.

The permutation sets come from :mod:`sslcore.data.jigsaw_permutations`.

Papers:
    - [0] Jigsaw, Noroozi & Favaro 2016, https://arxiv.org/abs/1603.09246
    - [1] PIRL, Misra & van der Maaten 2020, https://arxiv.org/abs/1912.01991
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from sslcore.config.schema import Key, declare
from sslcore.data.collators import COLLATORS, split_valid
from sslcore.data.jigsaw_permutations import (
    cache_dir,
    generate_jigsaw_permutations,
    load_permutations,
    save_permutations,
)
from sslcore.data.transforms import TRANSFORMS

log = logging.getLogger(__name__)

for _split in ("TRAIN", "TEST"):
    declare(f"DATA.{_split}", {
        "INPUT_KEY_NAMES": Key(["data"], list, "names of the collator outputs fed to the model. "
                               "With patch_and_image_collator: [patches, images], the keys of "
                               "MODEL.MULTI_INPUT_HEAD_MAPPING; otherwise [data]"),
    })

def _grid_side(num_patches: int) -> int:
    side = math.isqrt(int(num_patches))
    if num_patches < 1 or side * side != num_patches:
        raise ValueError(f"num_patches must be a perfect square (4, 9, 16, ...), got {num_patches}")
    return side


@TRANSFORMS.register("ImgPatchesFromTensor")
class ImgPatchesFromTensor:
    """Cut an image into an n x n grid and take one randomly shifted patch per cell (Jigsaw [0]).

    Cells are H // n by W // n pixels; each patch is ``patch_jitter`` pixels smaller per side
    and placed at a uniform random offset in [0, patch_jitter) inside its cell, so neighbouring
    patches never share an edge (no shortcut through continuous lines). Patches are in reading
    order: row by row, left to right.

    Paper: [0] https://arxiv.org/abs/1603.09246 (255 px crop, 3 x 3 grid of 85 px cells, 64 px patches)

    Args:
        num_patches: N = n * n, a perfect square.
        patch_jitter: cell side minus patch side, in pixels, >= 1.

    Raises:
        ValueError: if ``num_patches`` is not a perfect square or ``patch_jitter`` < 1; at call
            time, if the cells are not larger than ``patch_jitter``.

    Example:
        >>> ImgPatchesFromTensor(num_patches=9, patch_jitter=21)(torch.rand(3, 255, 255)).shape
        torch.Size([9, 3, 64, 64])
    """

    def __init__(self, num_patches: int = 9, patch_jitter: int = 21) -> None:
        if patch_jitter < 1:
            raise ValueError(f"ImgPatchesFromTensor patch_jitter must be >= 1, got {patch_jitter}")
        self.side = _grid_side(num_patches)
        self.num_patches, self.patch_jitter = int(num_patches), int(patch_jitter)

    def __call__(self, image: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
        """Return the (N, C, h, w) patches of a (C, H, W) image (tensor or array), as new memory."""
        if isinstance(image, Image.Image):
            raise ValueError("ImgPatchesFromTensor expects a (C, H, W) tensor, got a PIL image; "
                             "put it after ToTensor")
        image = torch.as_tensor(image)
        if image.ndim != 3:
            raise ValueError(f"ImgPatchesFromTensor expects a (C, H, W) tensor, got shape "
                             f"{tuple(image.shape)}; put it after ToTensor")
        cell_h, cell_w = image.shape[1] // self.side, image.shape[2] // self.side
        patch_h, patch_w = cell_h - self.patch_jitter, cell_w - self.patch_jitter
        if patch_h < 1 or patch_w < 1:
            raise ValueError(
                f"ImgPatchesFromTensor: {self.side}x{self.side} cells of a {tuple(image.shape[1:])} "
                f"image are {cell_h}x{cell_w} px, not larger than patch_jitter={self.patch_jitter}; "
                "crop a larger image or lower patch_jitter")
        offsets = torch.randint(0, self.patch_jitter, (self.num_patches, 2)).tolist()
        patches = []
        for k, (dy, dx) in enumerate(offsets):
            top, left = (k // self.side) * cell_h + dy, (k % self.side) * cell_w + dx
            patches.append(image[:, top:top + patch_h, left:left + patch_w])
        return torch.stack(patches).clone()


@TRANSFORMS.register("ShuffleImgPatches")
class ShuffleImgPatches:
    """Reorder a patch stack by a permutation drawn uniformly from a fixed set (Jigsaw [0]).

    Position t of the output holds input patch ``perm[t]``; the label is the permutation's row
    in the set, which a classifier over ``len(set)`` classes learns to predict.

    The set comes from ``perm_file`` (a .npy of shape (P, N), 0- or 1-based, e.g. VISSL's
    ``hamming_perms_2000_patches_9_max_avg.npy``) or is generated by
    :func:`generate_jigsaw_permutations`:

    - ``perm_file`` only: load it (it must exist);
    - ``perm_file`` and ``num_perms`` > 0: load it if it exists (its shape is checked), else
      generate ``num_perms`` permutations and save them there (point it into the run
      directory, e.g. ``${CHECKPOINT.DIR}/jigsaw_perms.npy``, to keep the set with the run);
    - ``num_perms`` only: generate once into ``$SSLCORE_CACHE_DIR`` (default ``~/.cache/sslcore``).

    Paper: [0] https://arxiv.org/abs/1603.09246

    Args:
        perm_file: path of the permutation set, or "".
        num_perms: P, size of a generated set; -1 when only loading.
        num_patches: N, patches per image.
        perm_seed: seed of the generated set.
        criterion: ``max_avg`` or ``max_min`` (see :func:`generate_jigsaw_permutations`).

    Raises:
        ValueError: neither a file nor a size given, a malformed set, or a set of another shape.
        FileNotFoundError: ``perm_file`` missing and nothing to generate.

    Example:
        >>> shuffle = ShuffleImgPatches(num_perms=100)
        >>> patches, label = shuffle(torch.rand(9, 3, 64, 64))   # label in [0, 100)
    """

    transforms_whole_sample = True  # it writes labels: SampleTransform passes the sample dict

    def __init__(self, perm_file: str = "", num_perms: int = -1, num_patches: int = 9,
                 perm_seed: int = 0, criterion: str = "max_avg") -> None:
        _grid_side(num_patches)
        if not perm_file and num_perms < 1:
            raise ValueError("ShuffleImgPatches needs perm_file (a .npy permutation set) or "
                             "num_perms > 0 (generate one), e.g. {name: ShuffleImgPatches, num_perms: 100}")
        if not perm_file:
            perm_file = str(cache_dir() / f"hamming_perms_{num_perms}_patches_{num_patches}_"
                            f"{criterion}_seed{perm_seed}.npy")
        path = Path(perm_file)
        if not path.exists() and num_perms < 1:
            raise FileNotFoundError(f"ShuffleImgPatches perm_file {path} does not exist; give "
                                    "num_perms > 0 to generate and save a set there")
        if not path.exists():
            save_permutations(generate_jigsaw_permutations(num_perms, num_patches, seed=perm_seed,
                                                           criterion=criterion), path)
            log.info("saved %d Jigsaw permutations to %s", num_perms, path)
        self.perms = load_permutations(path, num_patches)
        if num_perms > 0 and len(self.perms) != num_perms:
            raise ValueError(f"ShuffleImgPatches: {path} holds {len(self.perms)} permutations, "
                             f"num_perms={num_perms}; delete the file or fix num_perms")
        self.perm_file = str(path)

    def __call__(self, patches: Union[torch.Tensor, Sequence[torch.Tensor]]) -> Tuple[torch.Tensor, int]:
        """Shuffle a (N, C, h, w) stack (or a list of N (C, h, w) patches).

        Returns:
            ``(shuffled (N, C, h, w) float tensor, permutation index)``.
        """
        if not isinstance(patches, torch.Tensor):
            patches = torch.stack([torch.as_tensor(p) for p in patches])
        if patches.ndim != 4 or patches.shape[0] != self.perms.shape[1]:
            raise ValueError(f"ShuffleImgPatches expects ({self.perms.shape[1]}, C, h, w) patches, got "
                             f"{tuple(patches.shape)}; put ImgPatchesFromTensor before it")
        index = int(torch.randint(len(self.perms), ()).item())
        order = torch.from_numpy(self.perms[index])
        return patches[order].float(), index

    def apply_to_sample(self, sample: Dict[str, Any],
                        indices: Optional[FrozenSet[int]] = None) -> Dict[str, Any]:
        """Shuffle each selected view of a sample and set that view's label to the permutation index.

        Args:
            sample: VISSL sample ``{"data": [V views], "label": [V], ...}``.
            indices: the views to shuffle (the TRANSFORMS entry's ``indices``); None for all.

        Returns:
            A new sample with the same views, shuffled, and their labels replaced.
        """
        out = dict(sample)
        out["data"], labels = list(sample["data"]), list(sample.get("label", [0] * len(sample["data"])))
        for v, view in enumerate(sample["data"]):
            if indices is None or v in indices:
                out["data"][v], labels[v] = self(view)
        out["label"] = labels
        return out


@TRANSFORMS.register("ImgPilToPatchesAndImage")
class ImgPilToPatchesAndImage:
    """PIRL's views [1]: one random resized crop of the image, plus N jittered grid patches of
    another random resized crop, in random order (transforms that follow apply to each view).

    Paper: [1] https://arxiv.org/abs/1912.01991

    Args:
        crop_scale_image: (min, max) area fraction of the image crop.
        crop_size_image: side of the image crop in pixels.
        crop_scale_patches: (min, max) area fraction of the crop that is cut into patches.
        crop_size_patches: side of that crop in pixels (255 in PIRL: 64 px patches).
        permute_patches: shuffle the patches (PIRL always does; order is irrelevant to its head).
        num_patches: N, a perfect square.
        patch_jitter: as in :class:`ImgPatchesFromTensor` (VISSL fixes it at 21).

    Raises:
        ValueError: bad ``num_patches`` or scales that are not (min, max) pairs.

    Example:
        >>> views = ImgPilToPatchesAndImage()(image)   # [crop 224 px, 9 patches of 64 px]
    """

    def __init__(self, crop_scale_image: Sequence[float] = (0.08, 1.0), crop_size_image: int = 224,
                 crop_scale_patches: Sequence[float] = (0.6, 1.0), crop_size_patches: int = 255,
                 permute_patches: bool = True, num_patches: int = 9, patch_jitter: int = 21) -> None:
        if len(crop_scale_image) != 2 or len(crop_scale_patches) != 2:
            raise ValueError("ImgPilToPatchesAndImage: crop_scale_image and crop_scale_patches are "
                             f"[min, max] pairs, got {crop_scale_image} and {crop_scale_patches}")
        self.crop_image = T.RandomResizedCrop(crop_size_image, scale=tuple(crop_scale_image))
        self.crop_patches = T.RandomResizedCrop(crop_size_patches, scale=tuple(crop_scale_patches))
        self.to_patches = ImgPatchesFromTensor(num_patches, patch_jitter)
        self.permute = bool(permute_patches)

    def __call__(self, image: Image.Image) -> List[Image.Image]:
        """Return [image crop, patch, ..., patch] as N + 1 PIL images."""
        crop = self.crop_image(image)
        pixels = torch.from_numpy(np.array(self.crop_patches(image).convert("RGB"))).permute(2, 0, 1)
        stack = self.to_patches(pixels)
        if self.permute:
            stack = stack[torch.randperm(len(stack))]
        return [crop] + [Image.fromarray(np.ascontiguousarray(p.permute(1, 2, 0).numpy())) for p in stack]


# ----------------------------------------------------------------------------- collators

def _ints(values: List[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _stack_or_empty(tensors: List[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    if not isinstance(like, torch.Tensor):
        raise TypeError(f"patch collators stack tensors, got {type(like).__name__}; end "
                        "DATA.<split>.TRANSFORMS with ToTensor (or ShuffleImgPatches)")
    if not tensors:
        return like.new_zeros((0, *like.shape[1:])) if like.ndim == 4 else like.new_zeros((0, *like.shape))
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"patches of different shapes {sorted(shapes)} cannot be stacked")
    return torch.cat(tensors) if tensors[0].ndim == 4 else torch.stack(tensors)


@COLLATORS.register("siamese_collator")
def siamese_collator(batch: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Jigsaw's batch [0]: each sample's (N, C, h, w) patch stack, concatenated sample-major.

    Args:
        batch: B samples; each view is a (N, C, h, w) patch stack (one view per data source).

    Returns:
        ``data``: one (B'*N, C, h, w) tensor per view position, rows [sample 0's N patches,
        sample 1's, ...]; ``label``: (B',) view 0's label (the permutation index after
        ShuffleImgPatches); ``data_idx``: (B',); ``num_skipped``: B - B'.

    Raises:
        TypeError: views that are not tensors.
        ValueError: samples with different view counts or patch shapes.
    """
    valid, skipped = split_valid(batch)
    counts = {len(s["data"]) for s in batch}
    if len(counts) != 1:
        raise ValueError(f"samples in one batch have different numbers of views {sorted(counts)}")
    data = [_stack_or_empty([s["data"][v] for s in valid], batch[0]["data"][v])
            for v in range(counts.pop())]
    return {"data": data, "label": _ints([s["label"][0] for s in valid]),
            "data_idx": _ints([s["data_idx"][0] for s in valid]), "num_skipped": skipped}


@COLLATORS.register("patch_and_image_collator")
def patch_and_image_collator(batch: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """PIRL's batch [1]: view 0 of each sample is the image, views 1..N its patches.

    Args:
        batch: B samples with N + 1 (C, H, W) tensor views each (ImgPilToPatchesAndImage, ToTensor).

    Returns:
        ``data``: [images (B', C, H, W), patches (B'*N, C, h, w) sample-major];
        ``input_names``: ["images", "patches"]; ``label``, ``data_idx``: (B',);
        ``num_skipped``: B - B'.

    Raises:
        TypeError: views that are not tensors.
        ValueError: fewer than 2 views, or samples with different view counts or shapes.
    """
    valid, skipped = split_valid(batch)
    counts = {len(s["data"]) for s in batch}
    if len(counts) != 1 or min(counts) < 2:
        raise ValueError(f"patch_and_image_collator needs the same number (>= 2) of views per "
                         f"sample, [image, patches...]; got {sorted(counts)}. Use ImgPilToPatchesAndImage")
    images = _stack_or_empty([s["data"][0] for s in valid], batch[0]["data"][0])
    patches = _stack_or_empty([p for s in valid for p in s["data"][1:]], batch[0]["data"][1])
    return {"data": [images, patches], "input_names": ["images", "patches"],
            "label": _ints([s["label"][0] for s in valid]),
            "data_idx": _ints([s["data_idx"][0] for s in valid]), "num_skipped": skipped}
