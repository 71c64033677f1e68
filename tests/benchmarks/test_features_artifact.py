"""The features artifact: save/load round trip, file layout, and the errors users see."""

import os

import numpy as np
import pytest

from sslcore.benchmarks.features import (
    extract_pixel_features,
    feature_paths,
    list_layers,
    load_features,
    save_features,
)


def _arrays(n=6, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float64), rng.integers(0, 3, n), rng.permutation(n) + 100


def test_round_trip_keeps_values_and_fixes_dtypes(tmp_path):
    feats, targets, inds = _arrays()
    paths = save_features(tmp_path, "train", "res5avg", feats, targets.astype(np.int32), inds)
    assert {p.name for p in paths.values()} == {
        "train_res5avg_features.npy", "train_res5avg_targets.npy", "train_res5avg_inds.npy"}
    out_f, out_t, out_i = load_features(tmp_path, "train", "res5avg")
    assert out_f.dtype == np.float32 and out_t.dtype == np.int64 and out_i.dtype == np.int64
    np.testing.assert_allclose(out_f, feats.astype(np.float32))
    np.testing.assert_array_equal(out_t, targets)
    np.testing.assert_array_equal(out_i, inds)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")], "temporary files left behind"


def test_multilabel_targets_and_vissl_column_targets(tmp_path):
    feats, _, inds = _arrays()
    multi = np.eye(3, dtype=np.int64)[[0, 1, 2, 0, 1, 2]]
    save_features(tmp_path, "test", "res4", feats, multi, inds)
    assert load_features(tmp_path, "test", "res4")[1].shape == (6, 3)
    save_features(tmp_path, "test", "res5", feats, np.arange(6)[:, None], inds)
    assert load_features(tmp_path, "test", "res5")[1].shape == (6,)


def test_list_layers_per_split(tmp_path):
    feats, targets, inds = _arrays()
    for layer in ("res5avg", "conv1", "res_4_avg"):
        save_features(tmp_path, "train", layer, feats, targets, inds)
    save_features(tmp_path, "test", "res5avg", feats, targets, inds)
    assert list_layers(tmp_path, "train") == ["conv1", "res5avg", "res_4_avg"]
    assert list_layers(tmp_path, "test") == ["res5avg"]
    assert list_layers(tmp_path / "missing", "test") == []


def test_missing_layer_error_lists_present_layers(tmp_path):
    feats, targets, inds = _arrays()
    save_features(tmp_path, "train", "res5avg", feats, targets, inds)
    with pytest.raises(FileNotFoundError) as info:
        load_features(tmp_path, "test", "res5avg")
    message = str(info.value)
    assert "test_res5avg_features.npy" in message and "train: res5avg" in message and "test: none" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_features(tmp_path / "nope", "train", "res5avg")


def test_missing_companion_file(tmp_path):
    feats, targets, inds = _arrays()
    paths = save_features(tmp_path, "train", "res5avg", feats, targets, inds)
    paths["inds"].unlink()
    with pytest.raises(FileNotFoundError, match="train_res5avg_inds.npy"):
        load_features(tmp_path, "train", "res5avg")


@pytest.mark.parametrize("kwargs, match", [
    ({"features": np.zeros(6)}, "2-D"),
    ({"features": np.array([["a"] * 4] * 6)}, "real numbers"),
    ({"targets": np.zeros(5, np.int64)}, "5 rows but features have 6"),
    ({"targets": np.zeros(6, np.float32)}, "integers"),
    ({"inds": np.zeros(6, np.int64)}, "duplicate"),
    ({"inds": np.zeros((6, 2), np.int64)}, r"shape \(N,\)"),
    ({"split": "val"}, "use one of"),
    ({"layer": "../x"}, "plain file-name"),
])
def test_save_rejects_bad_input(tmp_path, kwargs, match):
    feats, targets, inds = _arrays()
    args = {"split": "train", "layer": "res5avg", "features": feats, "targets": targets, "inds": inds}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        save_features(tmp_path, **args)
    assert list_layers(tmp_path, "train") == []


def test_save_rejects_nan_features(tmp_path):
    feats, targets, inds = _arrays()
    feats[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in 1 of 6 rows"):
        save_features(tmp_path, "train", "res5avg", feats, targets, inds)


def test_load_rejects_mismatched_files(tmp_path):
    feats, targets, inds = _arrays()
    paths = save_features(tmp_path, "train", "res5avg", feats, targets, inds)
    np.save(paths["targets"], targets[:4])
    with pytest.raises(ValueError, match="4 rows but features have 6"):
        load_features(tmp_path, "train", "res5avg")
    np.save(paths["targets"], targets.astype(np.float32))
    with pytest.raises(ValueError, match="integers"):
        load_features(tmp_path, "train", "res5avg")
    np.save(paths["features"], np.zeros((6, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"float \(N, D\)"):
        load_features(tmp_path, "train", "res5avg")


def test_load_mmap_returns_same_values(tmp_path):
    feats, targets, inds = _arrays()
    save_features(tmp_path, "train", "res5avg", feats, targets, inds)
    mapped = load_features(tmp_path, "train", "res5avg", mmap_mode="r")[0]
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, load_features(tmp_path, "train", "res5avg")[0])


def test_feature_paths_layout(tmp_path):
    assert feature_paths(tmp_path, "test", "conv1")["targets"] == tmp_path / "test_conv1_targets.npy"


def test_extract_pixel_features_grey_and_colour():
    grey = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = extract_pixel_features(grey)
    assert out.dtype == np.float32 and out.shape == (2, 12)
    np.testing.assert_allclose(out[1], np.arange(12, 24) / 255.0, rtol=1e-6)
    colour = np.full((3, 2, 2, 3), 255, np.uint8)
    assert extract_pixel_features(colour).shape == (3, 12) and extract_pixel_features(colour).max() == 1.0


@pytest.mark.parametrize("images, match", [
    (np.zeros((2, 3, 4), np.float32), "uint8"),
    (np.zeros((2, 3), np.uint8), r"\(N, H, W\)"),
])
def test_extract_pixel_features_rejects(images, match):
    with pytest.raises(ValueError, match=match):
        extract_pixel_features(images)
