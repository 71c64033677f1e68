"""GeM, R-MAC and PCA whitening against plain computations."""


import numpy as np
import pytest
import torch

from sslcore.benchmarks.retrieval_descriptors import (
    describe,
    fit_pca_whitening,
    gem_descriptor,
    gem_pool,
    rmac_descriptor,
    rmac_regions,
)


def _positive_map(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.01


def test_gem_with_p_one_is_average_pooling_and_large_p_tends_to_max():
    x = _positive_map((3, 5, 4, 6))
    assert torch.allclose(gem_pool(x, p=1.0), x.mean(dim=(2, 3)))
    flat = x.flatten(2)
    for p in (3.0, 7.5):
        assert torch.allclose(gem_pool(x, p=p), flat.pow(p).mean(dim=2).pow(1 / p))
    gaps = [(x.amax(dim=(2, 3)) - gem_pool(x, p=p)).max().item() for p in (4.0, 32.0, 256.0)]
    assert gaps[0] > gaps[1] > gaps[2] > 0 and gaps[2] < 0.02


def test_gem_descriptor_has_unit_rows():
    d = gem_descriptor(_positive_map((4, 8, 3, 3)))
    assert torch.allclose(d.norm(dim=1), torch.ones(4, dtype=torch.float64), atol=1e-6)


def test_rmac_region_grid_of_a_square_map():
    # L=1: one 4x4 region; L=2: side floor(8/3)=2, 2x2 grid at 0, 2; L=3: side floor(8/4)=2, 3x3 at 0, 1, 2
    expected = ([(0, 0, 4)] + [(t, l, 2) for t in (0, 2) for l in (0, 2)]
                + [(t, l, 2) for t in (0, 1, 2) for l in (0, 1, 2)])
    assert rmac_regions(4, 4, levels=3) == expected


def test_rmac_region_grid_of_a_wide_map_follows_the_40_percent_overlap_rule():
    height, width = 4, 8
    # m extra regions on the long side: level-1 squares (side 4) overlapping closest to 40%
    overlaps = {m: 1 - ((width - height) / m) / height for m in range(1, 7)}
    extra = min(overlaps, key=lambda m: abs(overlaps[m] - 0.4))
    assert extra == 2  # overlaps: m=1 -> 0, m=2 -> 0.5, m=3 -> 0.67
    # level 1: side 4, 1 x 3 regions at left 0, 2, 4; levels 2 and 3: side 2, l x (l + 2) regions
    level1 = [(0, l, 4) for l in (0, 2, 4)]
    level2 = [(t, l, 2) for t in (0, 2) for l in (0, 2, 4, 6)]
    level3 = [(t, l, 2) for t in (0, 1, 2) for l in (0, 1, 3, 4, 6)]  # floor(i * 6 / 4)
    assert rmac_regions(height, width, levels=3) == level1 + level2 + level3
    assert rmac_regions(width, height, levels=1) == [(0, 0, 4), (2, 0, 4), (4, 0, 4)]


def test_rmac_descriptor_matches_a_plain_loop():
    x = _positive_map((2, 5, 4, 8), seed=3)
    plain = np.zeros((2, 5))
    for top, left, side in rmac_regions(4, 8, levels=3):
        region = x.numpy()[:, :, top:top + side, left:left + side].reshape(2, 5, -1).max(axis=2)
        plain += region / (np.linalg.norm(region, axis=1, keepdims=True) + 1e-6)
    plain /= np.linalg.norm(plain, axis=1, keepdims=True)
    assert np.allclose(rmac_descriptor(x).numpy(), plain, atol=1e-6)
    assert torch.equal(describe(x, "rmac"), rmac_descriptor(x))


def test_descriptors_refuse_vectors_and_unknown_names():
    with pytest.raises(ValueError, match="spatial"):
        gem_descriptor(torch.rand(2, 8))
    with pytest.raises(ValueError, match="unknown"):
        describe(torch.rand(1, 2, 3, 3), "vlad")


def test_whitening_fitted_on_its_split_decorrelates_it_and_only_uses_it():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(6, 6))
    train = rng.normal(size=(2000, 6)) @ mixing + 3.0
    other = rng.normal(size=(50, 6)) @ mixing
    whitening = fit_pca_whitening(train)
    assert np.allclose(whitening.mean, train.mean(axis=0))
    projected = (train - whitening.mean) @ whitening.projection.T
    assert np.allclose(np.cov(projected, rowvar=False, bias=True), np.eye(6), atol=1e-3)
    out = whitening.apply(other)
    assert out.shape == (50, 6) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(fit_pca_whitening(other).mean, whitening.mean)
    assert fit_pca_whitening(train, dims=3).apply(other).shape == (50, 3)
    with pytest.raises(ValueError, match="dims"):
        fit_pca_whitening(train, dims=7)
