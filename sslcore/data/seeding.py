"""Per-sample seeding: a sample's augmentations depend only on (seed, epoch, sample index).

Augmentations draw from Python's ``random``, NumPy's global generator and torch's default CPU
generator. Seeding all three from ``(seed, epoch, idx)`` right before a sample is transformed makes
the augmented views independent of how samples are spread over DataLoader workers, processes and
machines: one process with 16 samples per batch and two processes with 8 see identical views.

Seeding is cheap (a few microseconds): the seed is mixed with SplitMix64 in plain integer
arithmetic, and torch is seeded through its default CPU generator only (``torch.manual_seed`` would
also walk every CUDA device, about 100x slower). In the main process (``num_workers=0``) the three
generators' states are saved and restored around the sample, so the training loop's own random
stream is not tied to the data.
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import get_worker_info

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """Mix integers into one well-spread 63-bit seed (SplitMix64, Steele et al., OOPSLA 2014).

    Args:
        *parts: any Python ints (negative values are allowed); order matters.

    Returns:
        An int in [0, 2**63), equal for equal ``parts`` on every machine and Python version.

    Example:
        >>> derive_seed(0, 1, 5) == derive_seed(0, 1, 5) != derive_seed(0, 2, 5)
        True
    """
    state = 0x5EED
    for part in parts:
        state = _splitmix64(state ^ (int(part) & _MASK64))
    return state >> 1


def seed_rngs(seed: int) -> None:
    """Seed Python ``random``, NumPy's global generator and torch's default CPU generator.

    Args:
        seed: a non-negative int below 2**63 (as returned by :func:`derive_seed`).
    """
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.default_generator.manual_seed(seed)


@contextlib.contextmanager
def seeded_sample(seed: int, epoch: int, idx: int) -> Iterator[int]:
    """Run a block with every global generator seeded from ``(seed, epoch, idx)``.

    Inside a DataLoader worker the generators are simply re-seeded (workers own their state). In
    the main process their previous states are restored on exit.

    Args:
        seed: the run's seed (SEED_VALUE).
        epoch: the current epoch (0-based).
        idx: the sample's index in the dataset.

    Yields:
        The derived per-sample seed.

    Example:
        >>> with seeded_sample(0, 3, 17):
        ...     views = transform(sample)  # identical for every worker layout
    """
    sample_seed = derive_seed(seed, epoch, idx)
    if get_worker_info() is not None:
        seed_rngs(sample_seed)
        yield sample_seed
        return
    py_state = random.getstate()
    np_state = np.random.get_state(legacy=False)
    torch_state = torch.default_generator.get_state()
    try:
        seed_rngs(sample_seed)
        yield sample_seed
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.default_generator.set_state(torch_state)
