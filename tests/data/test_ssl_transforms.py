"""VISSL's solarize / photometric / per-crop random apply / Lab / RandomGrayscale transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from sslcore.data.seeding import seeded_sample
from sslcore.data.ssl_transforms import ImgPil2LabTensor, rgb_to_lab
from sslcore.data.transforms import TRANSFORMS, build_transform, build_transforms


@pytest.fixture(scope="module")
def image() -> Image.Image:
    """A 24x20 RGB image with gradients in every channel and some noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:20, 0:24]
    arr = np.stack([x * 10, y * 12, (x + y) * 5], axis=-1) + rng.integers(0, 20, (20, 24, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _arr(img):
    return np.asarray(img).astype(np.int32)


def _run(spec, data, seed=0, idx=0):
    with seeded_sample(seed, 0, idx):
        return build_transform(spec)(data)


def test_solarize_inverts_pixels_at_or_above_the_threshold(image):
    out = _run({"name": "ImgPilRandomSolarize", "prob": 1.0, "threshold": 128}, image)
    a = _arr(image)
    np.testing.assert_array_equal(_arr(out), np.where(a >= 128, 255 - a, a))
    assert out.size == image.size and out.mode == "RGB"
    same = _run({"name": "ImgPilRandomSolarize", "prob": 0.0}, image)
    np.testing.assert_array_equal(_arr(same), a)


def test_solarize_random_threshold_is_seeded(image):
    spec = {"name": "ImgPilRandomSolarize", "p": 1.0}
    outs = [_arr(_run(spec, image, seed=s)) for s in range(6)]
    np.testing.assert_array_equal(outs[0], _arr(_run(spec, image, seed=0)))
    assert len({o.tobytes() for o in outs}) > 2  # thresholds differ between samples
    a = _arr(image)
    for out in outs:  # every result is a solarization of the input for some threshold
        inverted = out != a
        assert np.all(out[inverted] == 255 - a[inverted])
    with pytest.raises(ValueError, match="not both"):
        build_transform({"name": "ImgPilRandomSolarize", "prob": 0.5, "p": 0.5})
    with pytest.raises(ValueError, match="probability"):
        build_transform({"name": "ImgPilRandomSolarize", "prob": 1.5})


def test_photometric_chain_ends_with_autocontrast_and_is_seeded(image):
    spec = {"name": "ImgPilRandomPhotometric", "p": 1.0}
    out = _run(spec, image, seed=3)
    assert out.size == image.size and out.mode == "RGB"
    arr = _arr(out)
    for c in range(3):  # autocontrast stretches every non-constant channel to 0..255
        if arr[..., c].max() > arr[..., c].min():
            assert arr[..., c].min() == 0 and arr[..., c].max() == 255
    np.testing.assert_array_equal(arr, _arr(_run(spec, image, seed=3)))
    assert len({_arr(_run(spec, image, seed=s)).tobytes() for s in range(5)}) > 1
    np.testing.assert_array_equal(_arr(_run({"name": "ImgPilRandomPhotometric", "p": 0.0}, image)),
                                  _arr(image))


def test_multicrop_random_apply_uses_each_views_probability(image):
    pipeline = build_transforms([
        {"name": "ImgReplicatePil", "num_times": 3},
        {"name": "ImgPilMultiCropRandomApply", "prob": [1.0, 0.0, 1.0],
         "transforms": [{"name": "ImgPilRandomSolarize", "prob": 1.0, "threshold": 0}]},
        {"name": "ToTensor"},
    ])
    sample = {"data": [image], "label": [4], "data_idx": [11], "data_valid": [True]}
    with seeded_sample(0, 0, 11):
        out = pipeline(sample)
    assert out["label"] == [4, 4, 4] and out["data_idx"] == [11, 11, 11]
    plain = T.functional.to_tensor(image)
    inverted = T.functional.to_tensor(Image.fromarray((255 - _arr(image)).astype(np.uint8)))
    torch.testing.assert_close(out["data"][0], inverted)
    torch.testing.assert_close(out["data"][1], plain)
    torch.testing.assert_close(out["data"][2], inverted)


def test_multicrop_random_apply_is_seeded_and_checks_view_count(image):
    t = build_transform({"name": "ImgPilMultiCropRandomApply", "prob": [0.5] * 8,
                         "transforms": [{"name": "ImgPilRandomSolarize", "prob": 1.0,
                                         "threshold": 0}]})
    def applied(seed):
        with seeded_sample(seed, 1, 2):
            views = t([image] * 8)
        return tuple(not np.array_equal(_arr(v), _arr(image)) for v in views)
    assert applied(5) == applied(5)
    assert 0 < sum(applied(5)) < 8 or 0 < sum(applied(6)) < 8
    with pytest.raises(ValueError, match="one probability per view"):
        t([image] * 2)
    with pytest.raises(ValueError, match="needs 'prob'"):
        build_transform({"name": "ImgPilMultiCropRandomApply", "prob": [], "transforms": []})


@pytest.mark.parametrize("rgb, lab", [
    # published CIE L*a*b* (D65) values of the sRGB primaries and white
    ((255, 0, 0), (53.24, 80.09, 67.20)),
    ((0, 255, 0), (87.73, -86.18, 83.18)),
    ((0, 0, 255), (32.30, 79.19, -107.86)),
    ((255, 255, 255), (100.0, 0.0, 0.0)),
    ((0, 0, 0), (0.0, 0.0, 0.0)),
])
def test_rgb_to_lab_matches_published_values(rgb, lab):
    np.testing.assert_allclose(rgb_to_lab(np.array(rgb, dtype=np.uint8)), lab, atol=0.02)


def test_lab_tensor_shape_and_vissl_ranges(image):
    out = build_transform({"name": "ImgPil2LabTensor"})(image)
    assert out.shape == (3, 20, 24) and out.dtype == torch.float32
    assert out[0].min() >= -50 and out[0].max() <= 50
    assert out[1:].abs().max() <= 128
    gray = Image.fromarray(np.full((4, 4, 3), 128, dtype=np.uint8))
    g = ImgPil2LabTensor()(gray.convert("L"))  # any mode: converted to RGB first
    torch.testing.assert_close(g[1:], torch.zeros(2, 4, 4), atol=1e-3, rtol=0)
    torch.testing.assert_close(g[0], torch.full((4, 4), 53.585 - 50), atol=0.01, rtol=0)


def test_random_grayscale_is_torchvisions(image):
    assert TRANSFORMS.get("RandomGrayscale") is T.RandomGrayscale
    out = _arr(_run({"name": "RandomGrayscale", "p": 1.0}, image))
    assert out.shape == (20, 24, 3) and np.all(out[..., 0] == out[..., 1])
    np.testing.assert_array_equal(_arr(_run({"name": "RandomGrayscale", "p": 0.0}, image)),
                                  _arr(image))
