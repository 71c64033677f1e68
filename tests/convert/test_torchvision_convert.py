"""sslcore ResNe(X)t trunk <-> torchvision ResNet: same weights, same outputs."""

import pytest
import torch
from torch import nn
from torchvision.models import ResNet, resnet18, resnext50_32x4d
from torchvision.models._utils import IntermediateLayerGetter

from sslcore.convert.torchvision import (build_torchvision_resnet, convert_torchvision_to_vissl,
                                         convert_vissl_to_torchvision, infer_trunk_settings,
                                         trunk_settings_from_checkpoint)
from sslcore.convert.vissl_state import wrap_trunk_state
from sslcore.models.trunks.resnet import ResNeXt

SETTINGS = [
    pytest.param(dict(depth=18, width_multiplier=0.125, stem="small"), 16, id="r18-w0.125-small"),
    pytest.param(dict(depth=50), 32, id="r50-standard"),
    pytest.param(dict(depth=50, width_multiplier=0.25, groups=4, width_per_group=8), 32,
                 id="resnext-w0.25"),
]


def _randomise_norms(module: nn.Module) -> None:
    """Non-trivial BN statistics so a wrongly mapped norm key changes the outputs."""
    gen = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def _torchvision_features(model: ResNet, x: torch.Tensor):
    """res5 map and pooled features of torchvision's forward, without fc (plain re-implementation)."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    res5 = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return res5, torch.flatten(model.avgpool(res5), 1)


@pytest.mark.parametrize("settings,size", SETTINGS)
def test_sslcore_trunk_matches_torchvision_after_conversion(settings, size):
    torch.manual_seed(0)
    trunk = ResNeXt(**settings).eval()
    _randomise_norms(trunk)
    checkpoint = wrap_trunk_state(trunk.state_dict())
    converted = convert_vissl_to_torchvision(checkpoint)
    assert not any(k.startswith("fc.") or k.startswith("_feature_blocks") for k in converted)

    model = build_torchvision_resnet(**settings, num_classes=7).eval()
    assert type(model) is ResNet
    missing = model.load_state_dict(converted, strict=False)
    assert sorted(missing.missing_keys) == ["fc.bias", "fc.weight"] and not missing.unexpected_keys
    model.fc = nn.Identity()  # trunk only: now every key must match
    model.load_state_dict(converted, strict=True)

    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ours_res5, ours_flat = trunk(x, out_feat_keys=["res5", "flatten"])
        tv_res5, tv_flat = _torchvision_features(model, x)
        tv_forward = model(x)  # torchvision's own forward with fc = Identity
    torch.testing.assert_close(tv_res5, ours_res5, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tv_flat, ours_flat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tv_forward, ours_flat, atol=1e-5, rtol=1e-5)

    # the reverse direction gives back the same weights and outputs
    back = convert_torchvision_to_vissl(model.state_dict())
    restored = ResNeXt(**settings).eval()
    restored.load_state_dict(back["classy_state_dict"]["base_model"]["model"]["trunk"], strict=True)
    for key, value in trunk.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(restored(x, out_feat_keys=["res5"])[0], ours_res5, atol=0, rtol=0)
    # the settings saved with the reverse conversion rebuild the same layout
    inferred = trunk_settings_from_checkpoint(back)
    expected = {"width_multiplier": 1.0, "groups": 1, "width_per_group": 64, "stem": "standard", **settings}
    assert {k: inferred[k] for k in expected} == expected


def test_standard_widths_are_torchvision_constructors():
    ours = build_torchvision_resnet(depth=18)
    theirs = resnet18()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    ours = build_torchvision_resnet(depth=50, groups=32, width_per_group=4)
    theirs = resnext50_32x4d()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_thin_model_works_with_torchvision_detection_utilities():
    model = build_torchvision_resnet(depth=18, width_multiplier=0.125, stem="small")
    body = IntermediateLayerGetter(model, return_layers={"layer2": "0", "layer4": "1"})
    out = body(torch.randn(1, 3, 32, 32))
    assert out["0"].shape == (1, 16, 16, 16) and out["1"].shape == (1, 64, 4, 4)


def test_torchvision_model_to_sslcore_round_trip_keeps_weights():
    torch.manual_seed(1)
    tv = resnet18(num_classes=5).eval()
    _randomise_norms(tv)
    checkpoint = convert_torchvision_to_vissl({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}})
    trunk_keys = checkpoint["classy_state_dict"]["base_model"]["model"]["trunk"]
    assert all(k.startswith("_feature_blocks.") for k in trunk_keys)
    assert checkpoint["config"]["MODEL"]["TRUNK"]["RESNETS"]["DEPTH"] == 18
    back = convert_vissl_to_torchvision(checkpoint)
    expected = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    assert back.keys() == expected.keys()
    assert all(torch.equal(back[k], expected[k]) for k in expected)
    # a flat sslcore model state dict (trunk.* / heads.*) is accepted too
    flat = {f"trunk.{k}": v for k, v in trunk_keys.items()}
    flat["heads.0.clf.0.weight"] = torch.zeros(3, 3)
    assert convert_vissl_to_torchvision(flat).keys() == expected.keys()


def test_settings_come_from_the_saved_config():
    trunk = ResNeXt(depth=18, width_multiplier=0.125, stem="small")
    config = {"MODEL": {"TRUNK": {"NAME": "resnet", "RESNETS": {
        "DEPTH": 18, "WIDTH_MULTIPLIER": 0.125, "STEM": "small", "NORM": "BatchNorm"}}}}
    settings = trunk_settings_from_checkpoint(wrap_trunk_state(trunk.state_dict(), config=config))
    assert settings["depth"] == 18 and settings["width_multiplier"] == 0.125 and settings["stem"] == "small"
    assert settings == {**infer_trunk_settings(trunk.state_dict()), "groupnorm_groups": 32}
    with pytest.raises(ValueError, match="MODEL.TRUNK.NAME"):
        trunk_settings_from_checkpoint({"config": {"MODEL": {"TRUNK": {"NAME": "alexnet"}}}})


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="no ResNet trunk"):
        convert_vissl_to_torchvision({"_feature_blocks.conv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not a torchvision ResNet trunk key"):
        convert_torchvision_to_vissl({"conv1.weight": torch.zeros(1), "stem.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="depth"):
        build_torchvision_resnet(depth=42)


def test_every_vissl_container_shape_gives_the_same_trunk():
    trunk = ResNeXt(depth=18, width_multiplier=0.125, stem="small").state_dict()
    expected = convert_vissl_to_torchvision(trunk)
    containers = [
        wrap_trunk_state(trunk),
        {"model_state_dict": trunk},
        {f"module.trunk.{k}": v for k, v in trunk.items()},
        {"model": {"trunk": trunk, "heads": {}}},
    ]
    for container in containers:
        converted = convert_vissl_to_torchvision(container)
        assert converted.keys() == expected.keys()
        assert all(converted[k] is expected[k] for k in expected)
