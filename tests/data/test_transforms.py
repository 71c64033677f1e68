"""Each transform on a real Fashion-MNIST image, the sample-level wrapper and per-sample seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from data_helpers import SIMCLR_TRANSFORMS, needs_fashion_mnist
from PIL import Image, ImageOps

from sslcore.data.dataset import SSLDataset
from sslcore.data.seeding import derive_seed, seeded_sample
from sslcore.data.sources import DiskFilelistSource, open_rgb
from sslcore.data.transforms import TRANSFORMS, build_transform, build_transforms

pytestmark = needs_fashion_mnist


@pytest.fixture(scope="module")
def image(small_fmnist) -> Image.Image:
    """A real Fashion-MNIST test image (RGB, 28x28) with visible structure."""
    rel = np.load(small_fmnist / "test_images.npy")[0]
    img = open_rgb(small_fmnist / rel)
    assert np.asarray(img).std() > 20
    return img


def _sample(img):
    return {"data": [img], "label": [4], "data_idx": [11], "data_valid": [True]}


def _run(spec, img, seed=0):
    with seeded_sample(seed, 0, 0):
        return build_transform(spec)(img)


def test_replicate_makes_independent_copies(image):
    views = _run({"name": "ImgReplicatePil", "num_times": 3}, image)
    assert len(views) == 3 and all(np.array_equal(np.asarray(v), np.asarray(image)) for v in views)
    assert len({id(v) for v in views}) == 3
    with pytest.raises(ValueError, match="num_times"):
        build_transform({"name": "ImgReplicatePil", "num_times": 0})


def test_random_resized_crop_size_and_content(image):
    out = _run({"name": "RandomResizedCrop", "size": 20, "scale": [0.2, 1.0]}, image)
    assert isinstance(out, Image.Image) and out.size == (20, 20) and out.mode == "RGB"
    full = _run({"name": "RandomResizedCrop", "size": 28, "scale": [1.0, 1.0], "ratio": [1.0, 1.0]}, image)
    np.testing.assert_array_equal(np.asarray(full), np.asarray(image))  # whole image, same size


def test_horizontal_flip_mirrors(image):
    out = _run({"name": "RandomHorizontalFlip", "p": 1.0}, image)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ImageOps.mirror(image)))


def test_color_distortion_changes_colors_and_sometimes_grays(image):
    tinted = Image.fromarray((np.asarray(image) * np.array([1.0, 0.6, 0.3])).astype(np.uint8))
    spec = {"name": "ImgPilColorDistortion", "strength": 1.0}
    outs = [np.asarray(_run(spec, tinted, seed=s)) for s in range(20)]
    assert all(o.shape == (28, 28, 3) and o.dtype == np.uint8 for o in outs)
    changed = sum(not np.array_equal(o, np.asarray(tinted)) for o in outs)
    assert changed >= 12  # jitter applied with p=0.8, grayscale with p=0.2
    gray = sum(np.array_equal(o[..., 0], o[..., 1]) and np.array_equal(o[..., 1], o[..., 2]) for o in outs)
    assert 0 < gray < 12
    with pytest.raises(ValueError, match="strength"):
        build_transform({"name": "ImgPilColorDistortion", "strength": -1})


def test_gaussian_blur_smooths_with_p1_and_is_identity_with_p0(image):
    blurred = np.asarray(_run({"name": "ImgPilGaussianBlur", "p": 1.0, "radius_min": 1.5, "radius_max": 2.0},
                              image)).astype(float)
    original = np.asarray(image).astype(float)
    assert blurred.shape == original.shape
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.7 * np.abs(np.diff(original, axis=1)).mean()
    same = _run({"name": "ImgPilGaussianBlur", "p": 0.0}, image)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(image))
    with pytest.raises(ValueError, match="radius_min <= radius_max"):
        build_transform({"name": "ImgPilGaussianBlur", "radius_min": 3, "radius_max": 1})


def test_to_tensor_and_normalize(image):
    tensor = _run({"name": "ToTensor"}, image)
    assert tensor.shape == (3, 28, 28) and tensor.dtype == torch.float32
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0 and tensor.max() > 0.5
    normalized = build_transform({"name": "Normalize", "mean": [0.5] * 3, "std": [0.25] * 3})(tensor)
    torch.testing.assert_close(normalized, (tensor - 0.5) / 0.25)


def test_multicrop_gives_crops_per_resolution(image):
    crops = _run({"name": "ImgPilToMultiCrop", "total_num_crops": 3, "num_crops": [1, 2],
                  "size_crops": [24, 12], "crop_scales": [[0.5, 1.0], [0.1, 0.5]]}, image)
    assert [c.size for c in crops] == [(24, 24), (12, 12), (12, 12)]


def test_torchvision_fallback_and_errors():
    assert "RandomResizedCrop" in TRANSFORMS and "CenterCrop" not in TRANSFORMS
    assert build_transform({"name": "CenterCrop", "size": 10})(Image.new("RGB", (28, 28))).size == (10, 10)
    with pytest.raises(KeyError, match="Did you mean: RandomResizedCrop"):
        build_transforms([{"name": "RandomResizeCrop", "size": 3}])
    with pytest.raises(ValueError, match="accepted"):
        build_transforms([{"name": "ImgPilGaussianBlur", "sigma": 3}])
    with pytest.raises(ValueError, match="'name'"):
        build_transforms([{"size": 3}])


def test_indices_apply_a_transform_to_some_views_only(image):
    transform = build_transforms([{"name": "ImgReplicatePil", "num_times": 2},
                                  {"name": "RandomHorizontalFlip", "p": 1.0, "indices": [1]},
                                  {"name": "ToTensor"}])
    out = transform(_sample(image))
    assert out["label"] == [4, 4] and out["data_idx"] == [11, 11] and out["data_valid"] == [True, True]
    torch.testing.assert_close(out["data"][1], out["data"][0].flip(-1))
    assert not torch.equal(out["data"][0], out["data"][1])


def test_per_sample_seed_controls_randomness(small_fmnist):
    source = DiskFilelistSource(small_fmnist / "train_images.npy")

    def make(seed):
        transform = build_transforms(SIMCLR_TRANSFORMS)
        return SSLDataset([source], label_type="zero", transform=transform, seed=seed)

    first, again, other_seed = make(0), make(0), make(1)
    a = first[5]["data"]
    assert len(a) == 2 and a[0].shape == (3, 28, 28) and not torch.equal(a[0], a[1])  # two different views
    for x, y in zip(a, again[5]["data"]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)  # same seed, epoch, idx: same views
    assert not torch.equal(a[0], other_seed[5]["data"][0])
    first.set_epoch(1)
    assert first.epoch == 1 and not torch.equal(a[0], first[5]["data"][0])  # next epoch: new views
    first.set_epoch(0)
    torch.testing.assert_close(first[5]["data"][0], a[0], rtol=0, atol=0)


def test_seeding_leaves_the_main_process_streams_alone():
    random.seed(1)
    torch.manual_seed(1)
    np.random.seed(1)
    expected = (random.random(), torch.rand(()).item(), np.random.rand())
    random.seed(1)
    torch.manual_seed(1)
    np.random.seed(1)
    with seeded_sample(7, 2, 3) as seed:
        assert seed == derive_seed(7, 2, 3)
        inside = torch.rand(()).item()
    assert (random.random(), torch.rand(()).item(), np.random.rand()) == expected
    with seeded_sample(7, 2, 3):
        assert torch.rand(()).item() == inside
