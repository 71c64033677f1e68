"""The SSL dataset: samples in VISSL's dict format, seeded augmentations, corrupt files skipped.

A sample is ``{"data": [view, ...], "label": [int per view], "data_idx": [idx per view],
"data_valid": [bool per view]}``. Before the transforms run, every global random generator is
seeded from (seed, epoch, idx) (:mod:`sslcore.data.seeding`), so a sample's views do not depend on
workers or processes. An unreadable image gives a sample with ``data_valid`` False (a black
placeholder image goes through the transforms) and one warning naming the file; the collator
drops it and counts it.

Config (per split, ``DATA.TRAIN`` / ``DATA.TEST``): DATA_SOURCES, DATA_PATHS, LABEL_SOURCES,
LABEL_PATHS, DATASET_NAMES, LABEL_TYPE, DATA_LIMIT, SYNTHETIC.* (declared below) and TRANSFORMS
(declared in :mod:`sslcore.data.transforms`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from sslcore.config.schema import Key, declare
from sslcore.data.catalog import get_dataset_paths
from sslcore.data.seeding import derive_seed, seeded_sample
from sslcore.data.sources import DataSource, build_source, load_label_array, load_labels
from sslcore.data.transforms import build_transforms

log = logging.getLogger(__name__)

LABEL_TYPES = ("standard", "sample_index", "zero")
SPLITS = ("TRAIN", "TEST")

for _split in SPLITS:
    declare(f"DATA.{_split}", {
        "DATA_SOURCES": Key([], list, "one source per input: disk_folder, disk_filelist or synthetic "
                            "(sslcore.data.sources.SOURCES); each contributes one view per sample"),
        "DATA_PATHS": Key([], list, "one path per DATA_SOURCES entry: a split directory (disk_folder) or "
                          "an images .npy (disk_filelist); empty: resolved from DATASET_NAMES"),
        "LABEL_SOURCES": Key([], list, "where labels come from: [disk_filelist] (a labels .npy) or "
                             "[disk_folder] (class folders); empty: the data source's own labels"),
        "LABEL_PATHS": Key([], list, "one path per LABEL_SOURCES entry; empty: from the catalog "
                           "via DATASET_NAMES"),
        "DATASET_NAMES": Key([], list, "dataset catalog names (sslcore.data.catalog), used when "
                             "DATA_PATHS is empty; split TEST reads the catalog's 'val' entry"),
        "LABEL_TYPE": Key("standard", str, "standard: the dataset's labels; sample_index: the sample's "
                          "index; zero: all 0", choices=LABEL_TYPES),
        "DATA_LIMIT": Key(-1, int, "use this many samples, a subset drawn with the run's seed (sorted); "
                          "-1: all samples"),
        "SYNTHETIC": {
            "NUM_SAMPLES": Key(1024, int, "images in a 'synthetic' source (not in VISSL)"),
            "IMAGE_SIZE": Key(32, int, "side in pixels of 'synthetic' images (not in VISSL)"),
            "NUM_CLASSES": Key(10, int, "label ids of 'synthetic' images, idx % NUM_CLASSES (not in VISSL)"),
        },
    })

_MAX_WARNINGS = 20
# what PIL raises for missing, truncated or corrupt files
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_warned: set = set()


def _warn_unreadable(where: str, exc: BaseException) -> None:
    if where in _warned or len(_warned) >= _MAX_WARNINGS:
        return
    _warned.add(where)
    suffix = " (further unreadable files are not logged)" if len(_warned) == _MAX_WARNINGS else ""
    log.warning("skipping unreadable image %s: %s%s", where, exc, suffix)


def select_subset(num_samples: int, limit: int, seed: int) -> Optional[np.ndarray]:
    """The seeded DATA_LIMIT subset: ``limit`` distinct indices drawn with ``seed``, sorted.

    Args:
        num_samples: N, the full dataset size.
        limit: DATA_LIMIT; -1 or >= N keeps all.
        seed: the run's seed.

    Returns:
        (limit,) int64 sorted indices, or None for "all samples".

    Raises:
        ValueError: if ``limit`` is 0 or below -1.
    """
    if limit == -1 or limit >= num_samples:
        return None
    if limit < 1:
        raise ValueError(f"DATA_LIMIT must be -1 (all samples) or >= 1, got {limit}")
    rng = np.random.default_rng(derive_seed(seed, 0xDA7A11))
    return np.sort(rng.choice(num_samples, size=limit, replace=False)).astype(np.int64)


class SSLDataset(torch.utils.data.Dataset):
    """Samples from one or more equally long sources, in VISSL's sample format.

    Args:
        sources: data sources of equal length N; each gives one view per sample.
        labels: (N,) int64 labels, or (N, C) int64 multi-hot labels (a sample's label is then a
            list of C ints and batches carry (B, C) labels); needed for ``label_type="standard"``.
        label_type: ``standard``, ``sample_index`` (label = dataset index) or ``zero``.
        transform: ``sample -> sample`` (see :func:`sslcore.data.transforms.build_transforms`);
            None keeps PIL images.
        seed: the run's seed; with the epoch and index it seeds each sample's augmentations.
        data_limit: -1 for all samples, else a seeded subset of this size (:func:`select_subset`).

    Raises:
        ValueError: sources of different lengths, missing or mismatched labels, bad label_type.

    Example:
        >>> ds = SSLDataset([DiskFolderSource("fmnist/train")], labels=..., transform=t, seed=0)
        >>> ds.set_epoch(3); ds[0]["data"][0].shape
        torch.Size([3, 28, 28])
    """

    def __init__(self, sources: Sequence[DataSource], *, labels: Optional[np.ndarray] = None,
                 label_type: str = "standard", transform: Optional[Callable] = None, seed: int = 0,
                 data_limit: int = -1) -> None:
        lengths = [len(s) for s in sources]
        if not sources or len(set(lengths)) != 1:
            raise ValueError(f"SSLDataset needs one or more sources of equal length, got lengths {lengths}")
        if label_type not in LABEL_TYPES:
            raise ValueError(f"LABEL_TYPE must be one of {LABEL_TYPES}, got {label_type!r}")
        if label_type == "standard" and (labels is None or len(labels) != lengths[0]):
            raise ValueError(
                f"LABEL_TYPE=standard needs {lengths[0]} labels, got "
                f"{'none' if labels is None else len(labels)}; set LABEL_SOURCES/LABEL_PATHS to a labels "
                "file of the same length, or use LABEL_TYPE=zero or sample_index for unlabeled data"
            )
        self.sources = list(sources)
        self.label_type = label_type
        self.transform = transform
        self.seed = int(seed)
        self._labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self._indices = select_subset(lengths[0], data_limit, self.seed)
        # shared memory, so persistent DataLoader workers see set_epoch from the main process
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._placeholder_size: Optional[Tuple[int, int]] = None  # (W, H) of the last good image

    def __len__(self) -> int:
        """Number of samples after DATA_LIMIT."""
        return len(self._indices) if self._indices is not None else len(self.sources[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that seeds augmentations (visible to already started workers too)."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        """The epoch last given to :meth:`set_epoch` (0 before)."""
        return int(self._epoch)

    def source_index(self, idx: int) -> int:
        """The index in the underlying source(s) of dataset sample ``idx``."""
        return int(self._indices[idx]) if self._indices is not None else int(idx)

    def labels(self) -> np.ndarray:
        """Labels of every sample in dataset order, as ``__getitem__`` gives them: (len,) or
        (len, C) int64."""
        if self.label_type == "sample_index":
            return np.arange(len(self), dtype=np.int64)
        if self.label_type == "zero":
            return np.zeros(len(self), dtype=np.int64)
        return self._labels if self._indices is None else self._labels[self._indices]

    def _label(self, idx: int, src_idx: int) -> Union[int, List[int]]:
        if self.label_type == "sample_index":
            return idx
        if self.label_type == "zero":
            return 0
        return self._labels[src_idx].tolist()  # an int, or C ints for (N, C) multi-hot labels

    def _load(self, source: DataSource, src_idx: int) -> Optional[Image.Image]:
        try:
            image = source.load(src_idx)
        except _UNREADABLE as exc:
            _warn_unreadable(source.describe(src_idx), exc)
            return None
        self._placeholder_size = image.size
        return image

    def _placeholder(self, source: DataSource, src_idx: int) -> Image.Image:
        """A black image standing in for an unreadable one, sized like the data when known."""
        if self._placeholder_size is None:
            self._placeholder_size = (32, 32)
            for other in range(src_idx + 1, min(src_idx + 9, len(source))):
                try:
                    self._placeholder_size = source.load(other).size
                    break
                except _UNREADABLE:
                    continue
        return Image.new("RGB", self._placeholder_size)

    def __getitem__(self, idx: int) -> Dict[str, List[Any]]:
        """Load, label and transform sample ``idx``.

        Returns:
            ``{"data": [V views: PIL images, or (C, H, W) float tensors after ToTensor],
            "label": [V ints], "data_idx": [V ints = idx], "data_valid": [V bools]}``.

        Raises:
            IndexError: if ``idx`` is outside [0, len).
        """
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range for a dataset of {len(self)}")
        src_idx = self.source_index(idx)
        images = [self._load(source, src_idx) for source in self.sources]
        valid = all(image is not None for image in images)
        views = [image if image is not None else self._placeholder(source, src_idx)
                 for image, source in zip(images, self.sources)]
        label = self._label(idx, src_idx)
        sample = {"data": views, "label": [label] * len(views), "data_idx": [idx] * len(views),
                  "data_valid": [valid] * len(views)}
        if self.transform is None:
            return sample
        with seeded_sample(self.seed, int(self._epoch), idx):
            return self.transform(sample)


def split_config(cfg: Any, split: str) -> Dict[str, Any]:
    """``cfg.DATA[split]`` as a plain dict.

    Args:
        cfg: the whole config (OmegaConf DictConfig or nested dict).
        split: ``"TRAIN"`` or ``"TEST"``.

    Raises:
        ValueError: if ``split`` is not TRAIN or TEST, or the config has no DATA section.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = cfg.get("DATA") if isinstance(cfg, (Mapping, DictConfig)) else None
    if data is None or split not in data:
        raise ValueError(f"config has no DATA.{split} section; build it with sslcore.config.compose_config")
    section = data[split]
    return OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)


def resolve_paths(split_cfg: Dict[str, Any], split: str) -> Tuple[List[str], List[str]]:
    """Data and label paths of a split: DATA_PATHS/LABEL_PATHS, or the catalog via DATASET_NAMES.

    Returns:
        ``(data_paths, label_paths)``; data_paths has one entry per DATA_SOURCES entry,
        label_paths is LABEL_PATHS, else the catalog's label paths, else empty.

    Raises:
        ValueError: missing sources, or list lengths that do not match.
        KeyError: a dataset name not in the catalog (lists close names).
    """
    names, sources = split_cfg["DATASET_NAMES"], split_cfg["DATA_SOURCES"]
    data_paths, label_paths = list(split_cfg["DATA_PATHS"]), list(split_cfg["LABEL_PATHS"])
    where = f"DATA.{split}"
    if not sources:
        raise ValueError(
            f"{where}.DATA_SOURCES is empty; set it, e.g. [disk_folder], [disk_filelist] or [synthetic]"
        )
    if not data_paths and names:
        if len(names) != len(sources):
            raise ValueError(
                f"{where}: {len(names)} DATASET_NAMES for {len(sources)} DATA_SOURCES; give one name per "
                "source"
            )
        resolved = [get_dataset_paths(name, split) for name in names]
        data_paths = [d for d, _ in resolved]
        label_paths = label_paths or [lbl for _, lbl in resolved]
    if not data_paths and all(s == "synthetic" for s in sources):
        data_paths = [""] * len(sources)
    if len(data_paths) != len(sources):
        raise ValueError(
            f"{where}: {len(data_paths)} DATA_PATHS for {len(sources)} DATA_SOURCES; give one path per "
            "source, or leave DATA_PATHS empty and set DATASET_NAMES"
        )
    return data_paths, label_paths


def _resolve_labels(split_cfg: Dict[str, Any], split: str, sources: List[DataSource],
                    label_paths: List[str]) -> Optional[np.ndarray]:
    label_sources = split_cfg["LABEL_SOURCES"]
    if len(label_sources) > 1:
        raise ValueError(f"DATA.{split}.LABEL_SOURCES: one label source is supported, got {label_sources}")
    if label_sources:
        if not label_paths:
            raise ValueError(
                f"DATA.{split}.LABEL_SOURCES={label_sources} needs LABEL_PATHS (or DATASET_NAMES)"
            )
        return load_labels(label_sources[0], label_paths[0], split_cfg)
    own = sources[0].labels()
    if own is None and label_paths and split_cfg["DATA_SOURCES"][0] == "disk_filelist":
        return load_label_array(label_paths[0])
    return own


def build_dataset(cfg: Any, split: str, *, seed: Optional[int] = None) -> SSLDataset:
    """Build the dataset of ``cfg.DATA[split]``.

    Args:
        cfg: the whole config (DictConfig or nested dict).
        split: ``"TRAIN"`` or ``"TEST"``.
        seed: the run's seed; default ``cfg.SEED_VALUE`` when present, else 0.

    Returns:
        An :class:`SSLDataset`; call ``set_epoch`` each epoch.

    Raises:
        ValueError: inconsistent DATA settings (the message names the key and the fix).
        FileNotFoundError: missing data or label files.
        KeyError: unknown source, transform or catalog name (lists close names).

    Example:
        >>> cfg = compose_config(["config.DATA.TRAIN.DATA_SOURCES=[synthetic]",
        ...                       "config.DATA.TRAIN.TRANSFORMS=[{name: ToTensor}]"])
        >>> build_dataset(cfg, "TRAIN", seed=0)[0]["data"][0].shape
        torch.Size([3, 32, 32])
    """
    split_cfg = split_config(cfg, split)
    if seed is None:
        seed = int(cfg.get("SEED_VALUE", 0) or 0) if hasattr(cfg, "get") else 0
    data_paths, label_paths = resolve_paths(split_cfg, split)
    sources = [build_source(name, path, split_cfg)
               for name, path in zip(split_cfg["DATA_SOURCES"], data_paths)]
    labels = None
    if split_cfg["LABEL_TYPE"] == "standard":
        labels = _resolve_labels(split_cfg, split, sources, label_paths)
    return SSLDataset(sources, labels=labels, label_type=split_cfg["LABEL_TYPE"],
                      transform=build_transforms(split_cfg["TRANSFORMS"]), seed=seed,
                      data_limit=split_cfg["DATA_LIMIT"])
