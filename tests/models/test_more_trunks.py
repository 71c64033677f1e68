"""RegNet, ViT and AlexNet trunks: VISSL feature names and shapes, gradients, configs, eval heads."""

from __future__ import annotations

import pytest
import torch
import torchvision

from sslcore.config import compose_config
from sslcore.models import build_model
from sslcore.models.trunks import TRUNKS, build_trunk
from sslcore.models.trunks.alexnet import FEATURE_NAMES, SPECS, AlexNet
from sslcore.models.trunks.regnet import RegNetTrunk
from sslcore.models.trunks.vision_transformer import VisionTransformer

# per-sample shapes written out by hand from the architectures (conv arithmetic)
ALEXNET_EXPECTED = {
    ("alexnet_rotnet", 224): {"conv1": (64, 55, 55), "pool1": (64, 27, 27), "conv2": (192, 27, 27),
                              "pool2": (192, 13, 13), "conv3": (384, 13, 13),
                              "conv4": (256, 13, 13), "conv5": (256, 13, 13),
                              "pool5": (256, 6, 6), "flatten": (9216,)},
    ("alexnet_bvlc", 227): {"conv1": (96, 55, 55), "pool1": (96, 27, 27), "conv2": (256, 27, 27),
                            "pool2": (256, 13, 13), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
                            "conv5": (256, 13, 13), "pool5": (256, 6, 6), "flatten": (9216,)},
    ("alexnet_jigsaw", 64): {"conv1": (96, 27, 27), "pool1": (96, 13, 13), "conv2": (256, 13, 13),
                             "pool2": (256, 6, 6), "conv3": (384, 6, 6), "conv4": (384, 6, 6),
                             "conv5": (256, 6, 6), "pool5": (256, 2, 2), "flatten": (1024,)},
}


@pytest.mark.parametrize("variant, size", list(ALEXNET_EXPECTED))
def test_alexnet_feature_shapes(variant, size):
    trunk = AlexNet(variant=variant)
    outs = trunk(torch.randn(2, 3, size, size), out_feat_keys=list(FEATURE_NAMES))
    got = {n: tuple(o.shape[1:]) for n, o in zip(FEATURE_NAMES, outs)}
    assert got == ALEXNET_EXPECTED[(variant, size)]
    assert trunk.feature_shapes(size) == got


@pytest.mark.parametrize("variant", sorted(SPECS))
def test_every_alexnet_builds_from_config_and_trains(variant):
    torch.manual_seed(0)
    trunk = build_trunk(compose_config([f"config.MODEL.TRUNK.NAME={variant}"]).MODEL.TRUNK)
    size = SPECS[variant].reference_size
    (flat,) = trunk(torch.randn(2, 3, size, size))
    assert flat.shape == (2, trunk.feature_channels["flatten"]) and torch.isfinite(flat).all()
    flat.square().mean().backward()
    conv1 = trunk._feature_blocks[0][0]
    assert conv1.weight.grad is not None and conv1.weight.grad.abs().sum() > 0
    keys = set(trunk.state_dict())
    assert "_feature_blocks.0.0.weight" in keys and "_feature_blocks.6.0.weight" in keys
    assert ("_feature_blocks.4.1.running_mean" in keys) == SPECS[variant].batchnorm[2]


def test_deepcluster_sobel_is_fixed_and_colorization_reads_only_l():
    dc = AlexNet(variant="alexnet_deepcluster")
    assert not any(p.requires_grad for p in dc.sobel.parameters())
    flat = torch.ones(1, 3, 8, 8)  # a constant image has no gradient
    torch.testing.assert_close(dc.sobel(flat)[:, :, 1:-1, 1:-1], torch.zeros(1, 2, 6, 6))
    color = AlexNet(variant="alexnet_colorization").eval()
    lab = torch.randn(2, 3, 224, 224)
    other_ab = lab.clone()
    other_ab[:, 1:] = torch.randn(2, 2, 224, 224)
    (a,), (b,), (c,) = color(lab, ["conv2"]), color(other_ab, ["conv2"]), color(lab[:, :1], ["conv2"])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    with pytest.raises(ValueError, match="Lab"):
        color(torch.randn(1, 2, 224, 224))


@pytest.mark.parametrize("name", ["regnet_y_400mf", "regnet_x_400mf"])
def test_regnet_preset_matches_torchvision(name):
    trunk = RegNetTrunk(regnet={"name": name})
    reference = getattr(torchvision.models, name)(weights=None)  # architecture only, no download

    def shapes(module):
        return {k: tuple(v.shape) for k, v in module.state_dict().items()}

    assert shapes(trunk._feature_blocks["conv1"]) == shapes(reference.stem)
    stages = list(reference.trunk_output.children())
    assert len(stages) == 4
    for index, stage in enumerate(stages):
        assert shapes(trunk._feature_blocks[f"res{index + 2}"]) == shapes(stage)
    assert trunk.feature_channels["flatten"] == reference.fc.in_features


def test_regnet_features_shapes_and_config_forms():
    preset = RegNetTrunk(regnet={"name": "regnet_y_400mf"})
    expected = {"conv1": (32, 32, 32), "res2": (48, 16, 16), "res3": (104, 8, 8),
                "res4": (208, 4, 4), "res5": (440, 2, 2), "avgpool": (440, 1, 1), "flatten": (440,)}
    assert preset.feature_names == list(expected)
    outs = preset(torch.randn(2, 3, 64, 64), out_feat_keys=list(expected))
    assert {n: tuple(o.shape[1:]) for n, o in zip(expected, outs)} == expected
    assert preset.feature_channels == {n: s[0] for n, s in expected.items()}
    design = RegNetTrunk(regnet={"depth": 16, "w_0": 48, "w_a": 27.89, "w_m": 2.09, "group_width": 8})
    assert design.feature_channels == preset.feature_channels
    anynet = RegNetTrunk(regnet={"name": "anynet", "depths": [1, 1], "widths": [16, 32],
                                 "group_widths": [8, 8], "bottleneck_multipliers": [1.0, 1.0],
                                 "strides": [2, 2], "stem_width": 8, "use_se": False})
    assert anynet.feature_names == ["conv1", "res2", "res3", "avgpool", "flatten"]
    (flat,) = anynet(torch.randn(2, 3, 32, 32))
    assert flat.shape == (2, 32)
    flat.sum().backward()
    assert anynet._feature_blocks["conv1"][0].weight.grad.abs().sum() > 0
    cfg = compose_config(["config.MODEL.TRUNK.NAME=regnet", "config.MODEL.TRUNK.REGNET.name=regnet_y_1.6gf"])
    assert build_trunk(cfg.MODEL.TRUNK).feature_channels["flatten"] == 888


@pytest.mark.parametrize("regnet, match", [
    ({}, "REGNET is empty"),
    ({"name": "regnet_y_7gf"}, "not a RegNet preset"),
    ({"name": "regnet_y_400mf", "widht": 3}, "unknown key"),
    ({"depth": 10}, "missing"),
    ({"name": "regnet_y_400mf", "block_type": "res_bottleneck_linear_block"}, "block_type"),
])
def test_regnet_bad_config_names_the_key(regnet, match):
    with pytest.raises(ValueError, match=match):
        RegNetTrunk(regnet=regnet)


def _tiny_vit(**kwargs):
    args = dict(image_size=32, patch_size=8, hidden_dim=32, num_layers=3, num_heads=4, mlp_dim=64)
    return VisionTransformer(**{**args, **kwargs})


def test_vit_feature_shapes_and_identities():
    torch.manual_seed(0)
    vit = _tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    names = ["lastCLS", "lastMAP", "lastBLK", "blkCLS0", "blkCLS2", "concatCLS2", "concatBLK3",
             "blkCLS1"]
    outs = dict(zip(names, vit(x, out_feat_keys=names)))
    assert {n: tuple(o.shape[1:]) for n, o in outs.items()} == {
        "lastCLS": (32,), "lastMAP": (32, 4, 4), "lastBLK": (17, 32), "blkCLS0": (32,),
        "blkCLS2": (32,), "concatCLS2": (64,), "concatBLK3": (17, 96), "blkCLS1": (32,)}
    assert {n: vit.feature_channels[n] for n in names} == {n: o.shape[1] if o.ndim != 3 else o.shape[2]
                                                           for n, o in outs.items()}
    (default,) = vit(x)
    torch.testing.assert_close(default, outs["lastCLS"])
    torch.testing.assert_close(default, vit.forward_features(x)[:, 0])  # timm's own path
    torch.testing.assert_close(outs["blkCLS2"], outs["lastCLS"])
    torch.testing.assert_close(outs["concatCLS2"], torch.cat([outs["blkCLS1"], outs["lastCLS"]], 1))
    torch.testing.assert_close(outs["lastBLK"][:, 1:].transpose(1, 2).reshape(2, 32, 4, 4),
                               outs["lastMAP"])
    assert not torch.allclose(outs["blkCLS0"], outs["lastCLS"])


def test_vit_other_input_size_backward_and_vissl_parameter_names():
    torch.manual_seed(0)
    vit = _tiny_vit(drop_path_rate=0.1)
    (small,) = vit(torch.randn(3, 3, 16, 16))  # multi-crop's small crops: interpolated positions
    assert small.shape == (3, 32)
    (cls,) = vit(torch.randn(2, 3, 32, 32))
    cls.square().mean().backward()
    for name in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        param = dict(vit.named_parameters())[name]
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert "blocks.0.attn.qkv.bias" not in dict(vit.named_parameters())  # QKV_BIAS False
    with pytest.raises(ValueError, match="PATCH_SIZE"):
        vit(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError, match="unknown trunk feature"):
        vit(torch.randn(1, 3, 32, 32), ["blkCLS3"])


def test_vit_presets_have_the_published_sizes():
    cfg = compose_config(["config.MODEL.TRUNK.NAME=vision_transformer",
                          "config.MODEL.TRUNK.VISION_TRANSFORMERS.name=vit_s_16",
                          "config.MODEL.TRUNK.VISION_TRANSFORMERS.QKV_BIAS=true"])
    vit = build_trunk(cfg.MODEL.TRUNK)
    # ViT-S/16 without classifier: 21,665,664 parameters (DeiT-S / DINO ViT-S)
    assert sum(p.numel() for p in vit.parameters()) == 21_665_664
    assert vit.feature_channels["concatCLS4"] == 4 * 384
    with pytest.raises(ValueError, match="must divide"):
        _tiny_vit(num_heads=5)


TINY_TRUNKS = {
    "regnet": (["config.MODEL.TRUNK.REGNET={name: anynet, depths: [1, 1], widths: [16, 32], "
                "group_widths: [8, 8], bottleneck_multipliers: [1.0, 1.0], strides: [2, 2], "
                "stem_width: 8}"], 32,
               [["res3", ["AdaptiveAvgPool2d", [[1, 1]]]], ["avgpool", ["Identity", []]]]),
    "vision_transformer": (["config.MODEL.TRUNK.VISION_TRANSFORMERS.IMAGE_SIZE=32",
                            "config.MODEL.TRUNK.VISION_TRANSFORMERS.PATCH_SIZE=8",
                            "config.MODEL.TRUNK.VISION_TRANSFORMERS.HIDDEN_DIM=32",
                            "config.MODEL.TRUNK.VISION_TRANSFORMERS.NUM_LAYERS=2",
                            "config.MODEL.TRUNK.VISION_TRANSFORMERS.NUM_HEADS=2",
                            "config.MODEL.TRUNK.VISION_TRANSFORMERS.MLP_DIM=64"], 32,
                           [["concatCLS2", ["Identity", []]], ["lastMAP", ["AdaptiveAvgPool2d", [[2, 2]]]]]),
    "alexnet_rotnet": ([], 64, [["conv5", ["AdaptiveMaxPool2d", [[2, 2]]]], ["flatten", ["Identity", []]]]),
}


@pytest.mark.parametrize("name", list(TINY_TRUNKS))
def test_trunks_work_with_linear_eval_heads_and_extraction(name):
    torch.manual_seed(0)
    overrides, size, pool_map = TINY_TRUNKS[name]
    base = [f"config.MODEL.TRUNK.NAME={name}", *overrides]
    trunk = build_trunk(compose_config(base).MODEL.TRUNK)
    x = torch.randn(4, 3, size, size)
    dims = []
    for feat, (op, args) in pool_map:
        (out,) = trunk(x, [feat])
        pooled = getattr(torch.nn, op)(*[tuple(a) if isinstance(a, list) else a for a in args])(out)
        dims.append(pooled.flatten(1).shape[1])
    heads = ", ".join(f"[eval_mlp, {{in_channels: {d}, dims: [{d}, 10]}}]" for d in dims)
    cfg = compose_config(base + [
        "config.MODEL.FEATURE_EVAL_SETTINGS.EVAL_MODE_ON=true",
        "config.MODEL.FEATURE_EVAL_SETTINGS.FREEZE_TRUNK_ONLY=true",
        f"config.MODEL.FEATURE_EVAL_SETTINGS.LINEAR_EVAL_FEAT_POOL_OPS_MAP={pool_map}",
        f"config.MODEL.HEAD.PARAMS=[{heads}]"])
    model = build_model(cfg.MODEL)
    logits = model(x)
    assert [tuple(l.shape) for l in logits] == [(4, 10)] * len(pool_map)
    sum(l.sum() for l in logits).backward()
    assert all(p.grad is None for p in model.trunk.parameters())
    assert all(p.grad is not None for p in model.heads.parameters())
    model.eval()
    feats = model.extract_trunk_features(x)
    assert list(feats) == [f for f, _ in pool_map]
    assert [f.shape[1] for f in feats.values()] == dims
    default = build_model(compose_config(base + [
        "config.MODEL.FEATURE_EVAL_SETTINGS.EVAL_MODE_ON=true",
        "config.MODEL.FEATURE_EVAL_SETTINGS.EXTRACT_TRUNK_FEATURES_ONLY=true"]).MODEL)
    assert list(default.eval().extract_trunk_features(x)) == [trunk.default_eval_feature]


def test_new_trunks_are_registered():
    assert {"regnet", "vision_transformer", *SPECS} <= set(TRUNKS)
