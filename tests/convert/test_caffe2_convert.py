"""caffe2 AlexNet .pkl -> sslcore AlexNet: blob names, BGR->RGB flip, outputs, the pickle guard."""

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from sslcore.convert.caffe2 import convert_caffe2_to_vissl, load_caffe2_pickle
from sslcore.models.trunks.alexnet import AlexNet

CONV_BLOCKS = {1: 0, 2: 2, 3: 4, 4: 5, 5: 6}


def caffe2_blobs(trunk, *, siamese=False):
    """Blobs as the ICCV'19 caffe2 AlexNets store them: BGR conv1, conv<k>_bn_* names, numpy."""
    sd = trunk.state_dict()
    tower = "_s0" if siamese else ""
    blobs = {}
    for k, block in CONV_BLOCKS.items():
        w = sd[f"_feature_blocks.{block}.0.weight"].numpy()
        if k == 1 and w.shape[1] == 3:
            w = w[:, ::-1]  # caffe2 nets read BGR
        blobs[f"conv{k}{tower}_w"] = np.ascontiguousarray(w)
        blobs[f"conv{k}{tower}_b"] = sd[f"_feature_blocks.{block}.0.bias"].numpy()
        if f"_feature_blocks.{block}.1.weight" in sd:
            for suffix, name in (("s", "weight"), ("b", "bias"), ("rm", "running_mean"), ("riv", "running_var")):
                blobs[f"conv{k}{tower}_bn_{suffix}"] = sd[f"_feature_blocks.{block}.1.{name}"].numpy()
    if siamese:  # other towers: copies that must be dropped (perturbed so using them would show)
        blobs.update({name.replace("_s0_", "_s3_"): value + 1 for name, value in list(blobs.items())})
        blobs["fc6_s0_w"] = np.zeros((16, 8), np.float32)
    blobs.update({"fc8_w": np.zeros((10, 4), np.float32), "lr": np.array([0.1]), "model_iter": np.array([7])})
    return blobs


def _randomise(trunk):
    gen = torch.Generator().manual_seed(0)
    for m in trunk.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
        if isinstance(m, nn.Conv2d):
            m.bias.data.normal_(0, 0.1, generator=gen)


@pytest.mark.parametrize("model,variant,size,siamese", [
    ("jigsaw", "alexnet_jigsaw", 64, True),
    ("colorization", "alexnet_colorization", 99, False),
    ("supervised", "alexnet_bvlc", 99, False),
])
def test_caffe2_pickle_loads_into_sslcore_alexnet(tmp_path, model, variant, size, siamese):
    torch.manual_seed(0)
    source = AlexNet(variant=variant).eval()
    _randomise(source)
    path = tmp_path / f"{model}.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"blobs": caffe2_blobs(source, siamese=siamese)}, handle)

    with pytest.raises(ValueError, match="arbitrary code.*--allow-pickle"):
        load_caffe2_pickle(path)
    checkpoint = convert_caffe2_to_vissl(load_caffe2_pickle(path, allow_pickle=True), variant=model)
    assert checkpoint["config"]["MODEL"]["TRUNK"]["NAME"] == variant
    trunk_state = checkpoint["classy_state_dict"]["base_model"]["model"]["trunk"]
    loaded = AlexNet(variant=variant).eval()
    loaded.load_state_dict(trunk_state, strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, out_feat_keys=["conv5"])[0], source(x, out_feat_keys=["conv5"])[0])


def test_bgr_flip_makes_rgb_input_match_the_caffe2_net_on_bgr():
    torch.manual_seed(0)
    blobs = caffe2_blobs(AlexNet(variant="alexnet_bvlc"))
    caffe2_conv1 = nn.Conv2d(3, 96, 11, 4)  # the caffe2 net, fed BGR images
    caffe2_conv1.weight.data = torch.from_numpy(blobs["conv1_w"].copy())
    caffe2_conv1.bias.data = torch.from_numpy(blobs["conv1_b"].copy())
    converted = convert_caffe2_to_vissl(blobs, variant="alexnet_bvlc")["classy_state_dict"]
    ours = nn.Conv2d(3, 96, 11, 4)
    ours.weight.data = converted["base_model"]["model"]["trunk"]["_feature_blocks.0.0.weight"]
    ours.bias.data = converted["base_model"]["model"]["trunk"]["_feature_blocks.0.0.bias"]
    rgb = torch.rand(1, 3, 35, 35)
    with torch.no_grad():
        torch.testing.assert_close(ours(rgb), caffe2_conv1(rgb[:, [2, 1, 0]]))
    unflipped = convert_caffe2_to_vissl(blobs, variant="alexnet_bvlc", bgr2rgb=False)
    assert np.array_equal(unflipped["classy_state_dict"]["base_model"]["model"]["trunk"]
                          ["_feature_blocks.0.0.weight"].numpy(), blobs["conv1_w"])


def test_wrong_variant_names_the_shapes():
    blobs = caffe2_blobs(AlexNet(variant="alexnet_bvlc"))
    with pytest.raises(ValueError, match="expects"):
        convert_caffe2_to_vissl(blobs, variant="alexnet_rotnet")
    with pytest.raises(ValueError, match="variant"):
        convert_caffe2_to_vissl(blobs, variant="vgg")
