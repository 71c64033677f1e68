"""Feature extraction (engine_name=extract_features): files, shapes, dtypes, weights actually used."""

import numpy as np
import pytest
import torch
from PIL import Image

from sslcore.benchmarks.features import load_features
from sslcore.engine.extract import extract_raw_pixel_features
from sslcore.engine.launcher import run_engine

EXTRACT = "config=feature_extraction/extract_resnet_fashion_mnist"


def _data(d):
    return [f"config.DATA.{s}.{k}=[{d}/{s.lower()}_{f}.npy]" for s in ("TRAIN", "TEST")
            for k, f in (("DATA_PATHS", "images"), ("LABEL_PATHS", "labels"))]


def _pretrain(data_dir, ckpt_dir):
    return run_engine([
        "config=pretrain/simclr/simclr_fashion_mnist_cpu", *_data(data_dir)[:1],
        f"config.DATA.TRAIN.LABEL_PATHS=[{data_dir}/train_labels.npy]",
        "config.DATA.TRAIN.DATA_LIMIT=128", "config.DATA.TRAIN.BATCHSIZE_PER_REPLICA=64",
        "config.DATA.NUM_DATALOADER_WORKERS=0", "config.OPTIMIZER.num_epochs=1",
        "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false", f"config.CHECKPOINT.DIR={ckpt_dir}",
    ])


def test_feature_files_names_shapes_dtypes(fmnist_small, tmp_path):
    out = tmp_path / "features"
    run_engine([EXTRACT, *_data(fmnist_small), "config.DATA.NUM_DATALOADER_WORKERS=0",
                f"config.EXTRACT_FEATURES.OUTPUT_DIR={out}", f"config.CHECKPOINT.DIR={tmp_path}",
                "config.MODEL.FEATURE_EVAL_SETTINGS.LINEAR_EVAL_FEAT_POOL_OPS_MAP="
                "[[res5avg,[Identity,[]]],[res4,[AdaptiveAvgPool2d,[[2,2]]]]]"],
               engine_name="extract_features")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{s}_{l}_{k}.npy" for s in ("train", "test") for l in ("res5avg", "res4")
                           for k in ("features", "targets", "inds"))
    for split, n in (("train", 512), ("test", 256)):
        labels = np.load(fmnist_small / f"{split}_labels.npy")
        for layer, dim in (("res5avg", 64), ("res4", 32 * 2 * 2)):
            feats, targets, inds = load_features(out, split, layer)
            assert feats.shape == (n, dim) and feats.dtype == np.float32
            assert targets.dtype == np.int64 and inds.dtype == np.int64
            np.testing.assert_array_equal(inds, np.arange(n))
            np.testing.assert_array_equal(targets, labels)
            assert np.isfinite(feats).all()


def test_extraction_uses_the_checkpoint(fmnist_small, tmp_path):
    ckpt = _pretrain(fmnist_small, tmp_path / "pretrain")
    common = [EXTRACT, *_data(fmnist_small), "config.DATA.NUM_DATALOADER_WORKERS=0",
              f"config.CHECKPOINT.DIR={tmp_path}"]
    run_engine(common + [f"config.MODEL.WEIGHTS_INIT.PARAMS_FILE={ckpt}",
                         f"config.EXTRACT_FEATURES.OUTPUT_DIR={tmp_path}/pre"], "extract_features")
    run_engine(common + [f"config.EXTRACT_FEATURES.OUTPUT_DIR={tmp_path}/rand"], "extract_features")
    pre, _, _ = load_features(tmp_path / "pre", "test", "res5avg")
    rand, _, _ = load_features(tmp_path / "rand", "test", "res5avg")
    assert not np.allclose(pre, rand)

    # recompute the first test images by hand from the checkpoint's trunk weights
    state = torch.load(ckpt, weights_only=True)["classy_state_dict"]["base_model"]["model"]["trunk"]
    from sslcore.models.trunks.resnet import ResNeXt
    trunk = ResNeXt(depth=18, width_multiplier=0.125, stem="small")
    trunk.load_state_dict(state)
    trunk.eval()
    paths = np.load(fmnist_small / "test_images.npy")[:4]
    imgs = []
    for p in paths:
        img = np.asarray(Image.open(fmnist_small / p).convert("RGB"), dtype=np.float32) / 255.0
        imgs.append((torch.from_numpy(img).permute(2, 0, 1) - 0.286) / 0.353)
    with torch.no_grad():
        expected = trunk(torch.stack(imgs), out_feat_keys=["res5avg"])[0].flatten(1).numpy()
    np.testing.assert_allclose(pre[:4], expected, rtol=1e-4, atol=1e-5)


def test_raw_pixel_features(fmnist_small, tmp_path):
    extract_raw_pixel_features(fmnist_small, tmp_path)
    feats, targets, inds = load_features(tmp_path, "train", "pixels")
    assert feats.shape == (512, 784) and feats.dtype == np.float32
    assert 0.0 <= feats.min() and feats.max() <= 1.0
    first = np.asarray(Image.open(fmnist_small / np.load(fmnist_small / "train_images.npy")[0]))
    np.testing.assert_allclose(feats[0], first.reshape(-1) / 255.0, atol=1e-6)
