"""Helpers shared by the data-layer tests (imported by name: tests/data is on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pytest
from omegaconf import DictConfig, OmegaConf

from sslcore.data.fashion_mnist import DEFAULT_SOURCE_DIR

SMALL_TRAIN, SMALL_TEST = 200, 100


def has_fashion_mnist() -> bool:
    """Whether the Debian package's IDX files are installed."""
    return Path(DEFAULT_SOURCE_DIR, "t10k-images-idx3-ubyte.gz").is_file()


needs_fashion_mnist = pytest.mark.skipif(
    not has_fashion_mnist(), reason="Fashion-MNIST IDX files missing: apt-get install dataset-fashion-mnist")


def make_cfg(values: Dict[str, Any]) -> DictConfig:
    """The default config with dotted keys set, e.g. ``{"DATA.TRAIN.DATA_SOURCES": ["synthetic"]}``."""
    from sslcore.config import compose_config

    cfg = compose_config([])
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


SIMCLR_TRANSFORMS = [
    {"name": "ImgReplicatePil", "num_times": 2},
    {"name": "RandomResizedCrop", "size": 28, "scale": [0.2, 1.0]},
    {"name": "RandomHorizontalFlip"},
    {"name": "ImgPilColorDistortion", "strength": 0.5},
    {"name": "ImgPilGaussianBlur", "p": 0.5, "radius_min": 0.1, "radius_max": 2.0},
    {"name": "ToTensor"},
]
