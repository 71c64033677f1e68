"""Data sources: where the images of a split come from (VISSL's ``DATA_SOURCES``) and their labels.

Registered sources (``SOURCES``):

- ``disk_folder``: a split directory ``<class>/<image>``; classes sorted by name give label ids
  0..C-1, images sorted by file name within a class (torchvision ``ImageFolder`` order).
- ``disk_filelist``: a ``.npy`` array of image paths (unicode strings; relative paths resolve
  against the ``.npy``'s directory, absolute ones are used as they are); labels come from a
  ``.npy`` of ints named in ``LABEL_PATHS``.
- ``synthetic``: random RGB images, deterministic per index, for speed tests only (never for
  accuracy claims).

A source loads one image at a time as an RGB ``PIL.Image``; an unreadable file raises
``OSError``/``ValueError`` and :class:`sslcore.data.dataset.SSLDataset` turns that into an invalid
sample instead of a crash.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
from PIL import Image

from sslcore.data.manifest import IMAGE_SUFFIXES
from sslcore.data.seeding import derive_seed
from sslcore.registry import Registry


class DataSource(abc.ABC):
    """One split's images, indexed 0..N-1."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """N, the number of images."""

    @abc.abstractmethod
    def load(self, idx: int) -> Image.Image:
        """Return image ``idx`` as an RGB PIL image.

        Raises:
            OSError: if the file is missing, unreadable or not an image.
        """

    @abc.abstractmethod
    def describe(self, idx: int) -> str:
        """Where image ``idx`` comes from (its path), for log messages."""

    def labels(self) -> Optional[np.ndarray]:
        """The source's own labels, (N,) int64, or None when it has none."""
        return None

    @classmethod
    @abc.abstractmethod
    def from_config(cls, path: str, split_cfg: Dict[str, Any]) -> "DataSource":
        """Build from a ``DATA_PATHS`` entry and the split's config section (a plain dict)."""


SOURCES: Registry[type] = Registry("data source")


def open_rgb(path: Union[str, Path]) -> Image.Image:
    """Open an image file fully (decode now, close the file) and convert it to RGB.

    Raises:
        OSError: missing, unreadable or corrupt file (PIL's ``UnidentifiedImageError`` included).
        ValueError: a file PIL rejects while decoding.
    """
    with Image.open(path) as image:
        return image.convert("RGB")


@SOURCES.register("disk_folder")
class DiskFolderSource(DataSource):
    """A split directory in ``<class>/<image>`` layout (VISSL's ``disk_folder``); hidden folders
    (``.ipynb_checkpoints``) are not classes.

    Args:
        root: the split directory, e.g. ``<dataset>/train``.

    Raises:
        FileNotFoundError: if ``root`` does not exist.
        ValueError: if it holds no class folder with images.
    """

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"disk_folder path {self.root} is not a directory; set DATA_PATHS to a split directory "
                "holding one folder per class (e.g. <dataset>/train)"
            )
        self.classes = sorted(e.name for e in os.scandir(self.root)
                              if e.is_dir() and not e.name.startswith("."))
        self._paths: List[str] = []
        ids: List[int] = []
        for label, name in enumerate(self.classes):
            files = sorted(e.name for e in os.scandir(self.root / name)
                           if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))
            self._paths += [str(self.root / name / f) for f in files]
            ids += [label] * len(files)
        if not self._paths:
            raise ValueError(
                f"disk_folder {self.root} holds no images in class folders; expected "
                f"{self.root}/<class>/<image> with suffixes {', '.join(IMAGE_SUFFIXES)}"
            )
        self._labels = np.asarray(ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._paths)

    def load(self, idx: int) -> Image.Image:
        return open_rgb(self._paths[idx])

    def describe(self, idx: int) -> str:
        return self._paths[idx]

    def labels(self) -> np.ndarray:
        return self._labels

    @classmethod
    def from_config(cls, path: str, split_cfg: Dict[str, Any]) -> "DiskFolderSource":
        return cls(path)


def load_npy(path: Union[str, Path], what: str) -> np.ndarray:
    """Load a ``.npy`` without pickle.

    Args:
        path: the file.
        what: what the file should hold, for messages ("image paths", "labels").

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if it needs pickle (an object array) or is not a .npy file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} file {path} does not exist; check DATA_PATHS / LABEL_PATHS or the catalog"
        )
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(
            f"{path} cannot be read without pickle ({exc}); re-save it as a plain array, e.g. "
            "np.save(path, np.array(paths, dtype=str)) for paths or np.int64 labels"
        ) from exc


def load_label_array(path: Union[str, Path]) -> np.ndarray:
    """Load a labels ``.npy``: (N,) class ids or (N, C) multi-hot integers (VISSL's VOC
    convention: 1 present, 0 difficult only, -1 absent), returned as int64.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if the array is not 1-D or 2-D integer.
    """
    labels = load_npy(path, "labels")
    if labels.ndim not in (1, 2) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels file {path} holds {labels.dtype} {labels.shape}; expected (N,) integers, "
            "one class id per image, or (N, C) integer multi-hot labels"
        )
    return labels.astype(np.int64)


@SOURCES.register("disk_filelist")
class DiskFilelistSource(DataSource):
    """Images listed in a ``.npy`` of paths (VISSL's ``disk_filelist``).

    Args:
        images_file: ``<split>_images.npy``, (N,) unicode paths, relative to the file's directory
            or absolute.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if it is not a 1-D array of strings.
    """

    def __init__(self, images_file: Union[str, Path]) -> None:
        self.images_file = Path(images_file)
        paths = load_npy(self.images_file, "image paths")
        if paths.ndim != 1 or paths.dtype.kind != "U":
            raise ValueError(
                f"{self.images_file} holds {paths.dtype} {paths.shape}; expected (N,) strings, "
                "save it with np.save(path, np.array(list_of_paths, dtype=str))"
            )
        self._paths = paths
        self._base = str(self.images_file.parent)

    def __len__(self) -> int:
        return len(self._paths)

    def describe(self, idx: int) -> str:
        return os.path.join(self._base, str(self._paths[idx]))

    def load(self, idx: int) -> Image.Image:
        return open_rgb(self.describe(idx))

    @classmethod
    def from_config(cls, path: str, split_cfg: Dict[str, Any]) -> "DiskFilelistSource":
        return cls(path)


@SOURCES.register("synthetic")
class SyntheticSource(DataSource):
    """Uniform-noise RGB images, identical for equal indices; labels ``idx % num_classes``.

    For throughput tests only: these images carry no signal, never report accuracy on them.

    Args:
        num_samples: N.
        image_size: side of the square images in pixels.
        num_classes: number of label ids.

    Raises:
        ValueError: if any argument is < 1.
    """

    def __init__(self, *, num_samples: int = 1024, image_size: int = 32, num_classes: int = 10) -> None:
        if min(num_samples, image_size, num_classes) < 1:
            raise ValueError(
                f"synthetic source needs num_samples, image_size, num_classes >= 1, got "
                f"{num_samples}, {image_size}, {num_classes}; fix DATA.<split>.SYNTHETIC"
            )
        self.num_samples, self.image_size, self.num_classes = num_samples, image_size, num_classes

    def __len__(self) -> int:
        return self.num_samples

    def load(self, idx: int) -> Image.Image:
        rng = np.random.default_rng(derive_seed(0x5E7, idx))
        pixels = rng.integers(0, 256, size=(self.image_size, self.image_size, 3), dtype=np.uint8)
        return Image.fromarray(pixels, mode="RGB")

    def describe(self, idx: int) -> str:
        return f"synthetic[{idx}]"

    def labels(self) -> np.ndarray:
        return np.arange(self.num_samples, dtype=np.int64) % self.num_classes

    @classmethod
    def from_config(cls, path: str, split_cfg: Dict[str, Any]) -> "SyntheticSource":
        synthetic = split_cfg.get("SYNTHETIC", {})
        return cls(num_samples=int(synthetic.get("NUM_SAMPLES", 1024)),
                   image_size=int(synthetic.get("IMAGE_SIZE", 32)),
                   num_classes=int(synthetic.get("NUM_CLASSES", 10)))


def build_source(name: str, path: str, split_cfg: Dict[str, Any]) -> DataSource:
    """Build the registered source ``name`` for one ``DATA_PATHS`` entry.

    Raises:
        KeyError: unknown source name (lists close names).
        FileNotFoundError, ValueError: from the source (missing or malformed data).
    """
    return SOURCES.get(name).from_config(path, split_cfg)


def load_labels(label_source: str, label_path: str, split_cfg: Dict[str, Any]) -> np.ndarray:
    """Labels for one ``LABEL_SOURCES`` / ``LABEL_PATHS`` entry.

    ``disk_filelist`` reads a ``.npy`` of ints; ``disk_folder`` and ``synthetic`` use the labels of
    that source built from ``label_path``.

    Returns:
        (N,) int64, or (N, C) int64 multi-hot from a disk_filelist labels file.

    Raises:
        KeyError: unknown label source.
        ValueError, FileNotFoundError: malformed or missing label data.
    """
    if label_source == "disk_filelist":
        return load_label_array(label_path)
    labels = build_source(label_source, label_path, split_cfg).labels()
    if labels is None:
        raise ValueError(
            f"label source '{label_source}' provides no labels; use disk_filelist with a labels .npy"
        )
    return labels
