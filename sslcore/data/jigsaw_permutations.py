"""Jigsaw permutation sets: permutations of N patches chosen far apart in Hamming distance.

A Jigsaw model classifies which permutation of a fixed set shuffled an image's patches; the set
is picked greedily for large Hamming distance between its members, so that no two classes are
nearly the same puzzle. Sets are generated deterministically from a seed, saved as ``.npy``
(P, N) arrays, and loaded again, also from VISSL's published 1-based files.

Paper:
    - [0] Jigsaw, Noroozi & Favaro 2016, https://arxiv.org/abs/1603.09246 (Sec. 3.3)
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np

CRITERIA = ("max_avg", "max_min")


def generate_jigsaw_permutations(num_perms: int, num_patches: int = 9, *, seed: int = 0,
                                 criterion: str = "max_avg") -> np.ndarray:
    """Pick ``num_perms`` permutations of ``num_patches`` items far apart in Hamming distance.

    Greedy, as in the Jigsaw paper [0]: start from one random permutation; then repeatedly add
    the unused permutation whose ``max_avg``: mean, or ``max_min``: minimum, Hamming distance to
    the ones chosen so far is largest (ties broken at random). Deterministic for a seed.
    VISSL's published sets (``hamming_perms_*_max_avg.npy``) used ``max_avg``.

    Paper: [0] https://arxiv.org/abs/1603.09246 (Sec. 3.3)

    Args:
        num_perms: P, 1 <= P <= num_patches!.
        num_patches: N <= 10 (every permutation is enumerated: 9! = 362,880).
        seed: seed of the first pick and the tie-breaking.
        criterion: ``max_avg`` or ``max_min``.

    Returns:
        (P, N) int64, 0-based; row 0 is the random start.

    Raises:
        ValueError: unknown criterion, N > 10, or P outside [1, N!].

    Example:
        >>> perms = generate_jigsaw_permutations(2000, 9, seed=0)   # (2000, 9), a few seconds
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if not 1 <= num_patches <= 10:
        raise ValueError(f"num_patches must be in [1, 10] (all permutations are enumerated), "
                         f"got {num_patches}")
    total = math.factorial(num_patches)
    if not 1 <= num_perms <= total:
        raise ValueError(f"num_perms must be in [1, {total}] for {num_patches} patches, got {num_perms}")
    candidates = np.array(list(itertools.permutations(range(num_patches))), dtype=np.uint8)
    by_position = np.ascontiguousarray(candidates.T)  # (N, N!): one row per position, fast compares
    rng = np.random.default_rng(seed)
    score = np.zeros(total, np.int32) if criterion == "max_avg" else np.full(total, num_patches, np.int32)
    chosen = [int(rng.integers(total))]
    dist = np.empty(total, dtype=np.uint8)
    for _ in range(num_perms - 1):
        dist.fill(num_patches)
        for position, value in enumerate(candidates[chosen[-1]]):
            dist -= by_position[position] == value
        if criterion == "max_avg":
            score += dist
        else:
            np.minimum(score, dist, out=score)
        score[chosen] = -1  # never pick twice (real scores are >= 0)
        best = np.flatnonzero(score == score.max())
        chosen.append(int(best[rng.integers(len(best))]))
    return candidates[chosen].astype(np.int64)


def load_permutations(path: Union[str, Path], num_patches: int) -> np.ndarray:
    """Read a permutation set .npy: (P, N), 0-based or 1-based (VISSL's files) -> 0-based int64.

    Raises:
        ValueError: not a 2-D array with N columns, or a row that is not a permutation.
    """
    perms = np.asarray(np.load(path, allow_pickle=False))
    if perms.ndim != 2 or perms.shape[1] != num_patches or len(perms) == 0:
        raise ValueError(f"{path}: a permutation set is a (P, {num_patches}) array, got shape {perms.shape}")
    perms = perms.astype(np.int64)
    if perms.min() == 1:
        perms = perms - 1
    if not (np.sort(perms, axis=1) == np.arange(num_patches)).all():
        raise ValueError(f"{path}: every row must be a permutation of 0..{num_patches - 1}")
    return perms


def save_permutations(perms: np.ndarray, path: Union[str, Path]) -> Path:
    """Write a permutation set as .npy atomically (concurrent writers leave one whole file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npy", dir=path.parent)
    os.close(fd)
    try:
        np.save(tmp, np.asarray(perms, dtype=np.int64))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def cache_dir() -> Path:
    """Where generated sets are cached: ``$SSLCORE_CACHE_DIR/jigsaw_permutations``
    (``SSLCORE_CACHE_DIR`` defaults to ``~/.cache/sslcore``)."""
    root = os.environ.get("SSLCORE_CACHE_DIR") or Path.home() / ".cache" / "sslcore"
    return Path(root) / "jigsaw_permutations"
