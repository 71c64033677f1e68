"""The ResNet/ResNeXt trunk: VISSL feature names and shapes, torchvision checkpoint names."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from sslcore.config import compose_config
from sslcore.models.trunks import TRUNKS, build_trunk
from sslcore.models.trunks.resnet import ResNeXt

NAMES = ["conv1", "res1", "res2", "res3", "res4", "res5", "res5avg", "flatten"]

# per-sample shapes at width 0.25 (stem width 16): written out by hand from the architecture
EXPECTED = {
    (18, "small", 32): {"conv1": (16, 32, 32), "res1": (16, 32, 32), "res2": (16, 32, 32),
                        "res3": (32, 16, 16), "res4": (64, 8, 8), "res5": (128, 4, 4),
                        "res5avg": (128, 1, 1), "flatten": (128,)},
    (18, "standard", 64): {"conv1": (16, 32, 32), "res1": (16, 16, 16), "res2": (16, 16, 16),
                           "res3": (32, 8, 8), "res4": (64, 4, 4), "res5": (128, 2, 2),
                           "res5avg": (128, 1, 1), "flatten": (128,)},
    (50, "small", 28): {"conv1": (16, 28, 28), "res1": (16, 28, 28), "res2": (64, 28, 28),
                        "res3": (128, 14, 14), "res4": (256, 7, 7), "res5": (512, 4, 4),
                        "res5avg": (512, 1, 1), "flatten": (512,)},
    (50, "standard", 64): {"conv1": (16, 32, 32), "res1": (16, 16, 16), "res2": (64, 16, 16),
                           "res3": (128, 8, 8), "res4": (256, 4, 4), "res5": (512, 2, 2),
                           "res5avg": (512, 1, 1), "flatten": (512,)},
}


@pytest.mark.parametrize("depth, stem, size", list(EXPECTED))
def test_feature_names_and_shapes(depth, stem, size):
    trunk = ResNeXt(depth=depth, width_multiplier=0.25, stem=stem)
    outputs = trunk(torch.randn(2, 3, size, size), out_feat_keys=NAMES)
    got = {name: tuple(out.shape[1:]) for name, out in zip(NAMES, outputs)}
    assert got == EXPECTED[(depth, stem, size)]
    assert all(out.shape[0] == 2 for out in outputs)
    assert trunk.feature_shapes(size) == EXPECTED[(depth, stem, size)]
    assert trunk.feature_channels == {n: s[0] for n, s in EXPECTED[(depth, stem, size)].items()}


def test_default_output_is_flatten_and_keys_come_in_requested_order():
    torch.manual_seed(0)
    trunk = ResNeXt(depth=18, width_multiplier=0.25, stem="small").eval()
    x = torch.randn(3, 3, 32, 32)
    (default,) = trunk(x)
    res3, flat, res2, res3_again = trunk(x, out_feat_keys=["res3", "flatten", "res2", "res3"])
    torch.testing.assert_close(default, flat)
    assert res3.shape == (3, 32, 16, 16) and res2.shape == (3, 16, 32, 32)
    torch.testing.assert_close(res3, res3_again)
    torch.testing.assert_close(flat, trunk(x, ["res5avg"])[0].flatten(1))


def test_stops_after_the_deepest_requested_feature():
    trunk = ResNeXt(depth=18, width_multiplier=0.25, stem="small")
    ran = []
    for name, block in trunk._feature_blocks.items():
        block.register_forward_hook(lambda *_, name=name: ran.append(name))
    trunk(torch.randn(1, 3, 32, 32), out_feat_keys=["res3", "conv1"])
    assert ran == ["conv1", "bn1", "conv1_relu", "maxpool", "layer1", "layer2"]


def test_unknown_feature_and_bad_input_raise_value_error():
    trunk = ResNeXt(depth=18, width_multiplier=0.25, stem="small")
    with pytest.raises(ValueError, match="res5avg") as info:
        trunk(torch.randn(1, 3, 32, 32), out_feat_keys=["res6"])
    assert "res6" in str(info.value)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        trunk(torch.randn(3, 32, 32))


@pytest.mark.parametrize("kwargs, match", [
    ({"depth": 42}, "DEPTH"),
    ({"depth": 18, "groups": 32, "width_per_group": 4}, "GROUPS=1"),
    ({"stem": "tiny"}, "STEM"),
    ({"width_multiplier": 0.0}, "WIDTH_MULTIPLIER"),
    ({"norm": "InstanceNorm"}, "NORM"),
])
def test_invalid_settings_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNeXt(**kwargs)


@pytest.mark.parametrize("ours, theirs", [
    ({"depth": 18}, torchvision.models.resnet18),
    ({"depth": 50, "groups": 32, "width_per_group": 4}, torchvision.models.resnext50_32x4d),
])
def test_state_dict_loads_into_torchvision_and_gives_the_same_features(ours, theirs):
    torch.manual_seed(0)
    trunk = ResNeXt(**ours).eval()
    # non-trivial running statistics, so the comparison covers every BatchNorm buffer
    for module in trunk.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    prefix = "_feature_blocks."
    state = trunk.state_dict()
    assert all(k.startswith(prefix) for k in state)
    reference = theirs(weights=None)
    missing, unexpected = reference.load_state_dict(
        {k[len(prefix):]: v for k, v in state.items()}, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    reference.fc = nn.Identity()
    reference.eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(trunk(x, ["res5avg"])[0].flatten(1), reference(x))


def test_groupnorm_outputs_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    group = ResNeXt(depth=18, width_multiplier=0.25, stem="small", norm="GroupNorm")
    torch.testing.assert_close(group(x)[0][:2], group(x[:2])[0])
    assert any(isinstance(m, nn.GroupNorm) and m.num_groups == 16 for m in group.modules())
    batch = ResNeXt(depth=18, width_multiplier=0.25, stem="small", norm="BatchNorm")
    assert not torch.allclose(batch(x)[0][:2], batch(x[:2])[0])
    layer = ResNeXt(depth=18, width_multiplier=0.25, stem="small", norm="LayerNorm")
    torch.testing.assert_close(layer(x)[0][:2], layer(x[:2])[0])


def test_zero_init_residual_makes_blocks_start_as_identity():
    trunk = ResNeXt(depth=18, width_multiplier=0.25, stem="small", zero_init_residual=True)
    block = trunk._feature_blocks.layer1[0]  # no downsample: output = relu(input + 0)
    x = torch.randn(2, 16, 8, 8).relu()
    torch.testing.assert_close(block(x), x)
    plain = ResNeXt(depth=18, width_multiplier=0.25, stem="small")
    assert not torch.allclose(plain._feature_blocks.layer1[0](x), x)


# the smallest settings and input side of the other trunks (their own tests: test_more_trunks.py)
OTHER_TRUNKS = {
    "regnet": (["config.MODEL.TRUNK.REGNET={name: anynet, depths: [1, 1], widths: [16, 32], "
                "group_widths: [8, 8], bottleneck_multipliers: [1.0, 1.0], strides: [2, 2], "
                "stem_width: 8}"], 16),
    "vision_transformer": ([f"config.MODEL.TRUNK.VISION_TRANSFORMERS.{k}={v}" for k, v in
                            (("IMAGE_SIZE", 16), ("PATCH_SIZE", 8), ("HIDDEN_DIM", 16),
                             ("NUM_LAYERS", 1), ("NUM_HEADS", 2), ("MLP_DIM", 32))], 16),
    **{name: ([], 96) for name in ("alexnet_bvlc", "alexnet_jigsaw", "alexnet_rotnet",
                                   "alexnet_deepcluster", "alexnet_colorization")},
}


def test_every_registered_trunk_builds_from_config_and_trains():
    base = ["config.MODEL.TRUNK.RESNETS.DEPTH=18", "config.MODEL.TRUNK.RESNETS.WIDTH_MULTIPLIER=0.125",
            "config.MODEL.TRUNK.RESNETS.STEM=small"]
    cfg = compose_config(base)
    for name in TRUNKS.names():
        overrides, size = OTHER_TRUNKS.get(name, ([], 16))
        cfg = compose_config(base + overrides + [f"config.MODEL.TRUNK.NAME={name}"])
        trunk = build_trunk(cfg.MODEL.TRUNK)
        (out,) = trunk(torch.randn(2, 3, size, size))
        out.square().mean().backward()
        assert torch.isfinite(out).all()
        grads = [p.grad for p in trunk.parameters() if p.requires_grad]  # DeepCluster's Sobel is fixed
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
    cfg.MODEL.TRUNK.NAME = "resnett"
    with pytest.raises(ValueError, match="resnet"):
        build_trunk(cfg.MODEL.TRUNK)


def test_resnext_settings_from_config():
    cfg = compose_config(["config.MODEL.TRUNK.RESNETS.DEPTH=50", "config.MODEL.TRUNK.RESNETS.GROUPS=32",
                          "config.MODEL.TRUNK.RESNETS.WIDTH_PER_GROUP=4",
                          "config.MODEL.TRUNK.RESNETS.WIDTH_MULTIPLIER=0.5"])
    trunk = build_trunk(cfg.MODEL.TRUNK)
    conv = trunk._feature_blocks.layer1[0].conv2
    # 3x3 conv of a ResNeXt bottleneck: width = planes * wpg / 64 * groups = 32 * 4 / 64 * 32
    assert conv.groups == 32 and conv.in_channels == 64
    assert trunk.feature_channels["flatten"] == 1024
