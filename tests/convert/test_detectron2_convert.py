"""sslcore ResNe(X)t trunk -> detectron2 .pkl: detectron2's key names, shapes and the same arrays."""

import pickle

import numpy as np
import pytest
import torch

from sslcore.convert.detectron2 import (convert_vissl_to_detectron2, detectron2_resnet_config,
                                        save_detectron2_checkpoint)
from sslcore.convert.vissl_state import wrap_trunk_state
from sslcore.models.trunks.resnet import ResNeXt

NORM = ("weight", "bias", "running_mean", "running_var")


def expected_detectron2_layout(*, blocks, bottleneck, base, groups=1, width_per_group=64):
    """detectron2's documented ResNet names with their shapes, written out from the architecture.

    stem.conv1 (+ .norm); res2..res5, block j: conv1..conv3 (conv1..conv2 for basic blocks), each
    with .norm; block 0 of a stage has shortcut (+ .norm) when it changes stride or width.
    """
    layout = {"stem.conv1.weight": (base, 3, 7, 7)}
    layout.update({f"stem.conv1.norm.{p}": (base,) for p in NORM})
    expansion = 4 if bottleneck else 1
    in_ch = base
    for stage, count in enumerate(blocks):
        planes = base * 2 ** stage
        out = planes * expansion
        width = int(planes * width_per_group / 64) * groups
        for j in range(count):
            name = f"res{stage + 2}.{j}"
            cin = in_ch if j == 0 else out
            if bottleneck:
                convs = [(width, cin, 1, 1), (width, width // groups, 3, 3), (out, width, 1, 1)]
            else:
                convs = [(planes, cin, 3, 3), (planes, planes, 3, 3)]
            for k, shape in enumerate(convs, start=1):
                layout[f"{name}.conv{k}.weight"] = shape
                layout.update({f"{name}.conv{k}.norm.{p}": (shape[0],) for p in NORM})
            if j == 0 and (stage > 0 or cin != out):
                layout[f"{name}.shortcut.weight"] = (out, cin, 1, 1)
                layout.update({f"{name}.shortcut.norm.{p}": (out,) for p in NORM})
        in_ch = out
    return layout


def source_key(d2_key):
    """Inverse naming, written independently of the converter: detectron2 key -> sslcore trunk key."""
    parts = d2_key.split(".")
    if parts[0] == "stem":
        return "_feature_blocks." + ("conv1.weight" if parts[2] == "weight" else f"bn1.{parts[-1]}")
    stage = int(parts[0][3:]) - 1
    prefix = f"_feature_blocks.layer{stage}.{parts[1]}."
    if parts[2] == "shortcut":
        return prefix + ("downsample.0.weight" if parts[3] == "weight" else f"downsample.1.{parts[-1]}")
    k = parts[2][4:]
    return prefix + (f"conv{k}.weight" if parts[3] == "weight" else f"bn{k}.{parts[-1]}")


@pytest.mark.parametrize("settings,blocks,bottleneck", [
    (dict(depth=18, width_multiplier=0.125), (2, 2, 2, 2), False),
    (dict(depth=50, width_multiplier=0.125, groups=2, width_per_group=32), (3, 4, 6, 3), True),
])
def test_names_shapes_and_arrays_follow_detectron2(tmp_path, settings, blocks, bottleneck):
    torch.manual_seed(0)
    trunk = ResNeXt(**settings)
    for m in trunk.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    converted = convert_vissl_to_detectron2(wrap_trunk_state(trunk.state_dict()))
    assert converted["__author__"] == "sslcore" and converted["matching_heuristics"] is True
    base = int(round(64 * settings["width_multiplier"]))
    expected = expected_detectron2_layout(blocks=blocks, bottleneck=bottleneck, base=base,
                                          groups=settings.get("groups", 1),
                                          width_per_group=settings.get("width_per_group", 64))
    model = converted["model"]
    assert set(model) == set(expected)
    assert {k: tuple(v.shape) for k, v in model.items()} == expected
    source = trunk.state_dict()
    for key, value in model.items():
        assert isinstance(value, np.ndarray) and value.dtype == np.float32
        np.testing.assert_array_equal(value, source[source_key(key)].numpy())

    path = save_detectron2_checkpoint(converted, tmp_path / "model.pkl")
    with open(path, "rb") as handle:
        loaded = pickle.load(handle)
    assert loaded.keys() == converted.keys()
    assert all(np.array_equal(loaded["model"][k], model[k]) for k in model)


def test_config_hint_matches_the_layout():
    hint = detectron2_resnet_config(depth=50, width_multiplier=0.125, groups=2, width_per_group=32)
    # res2 bottleneck width NUM_GROUPS * WIDTH_PER_GROUP equals the converted conv1 output channels
    model = convert_vissl_to_detectron2(ResNeXt(depth=50, width_multiplier=0.125, groups=2,
                                                width_per_group=32).state_dict())["model"]
    assert hint["NUM_GROUPS"] * hint["WIDTH_PER_GROUP"] == model["res2.0.conv1.weight"].shape[0]
    assert hint["RES2_OUT_CHANNELS"] == model["res2.0.conv3.weight"].shape[0]
    assert hint["STEM_OUT_CHANNELS"] == model["stem.conv1.weight"].shape[0]
    assert hint["STRIDE_IN_1X1"] is False


def test_small_stem_is_refused():
    with pytest.raises(ValueError, match="STEM"):
        convert_vissl_to_detectron2(ResNeXt(depth=18, width_multiplier=0.125, stem="small").state_dict())


def test_loads_into_detectron2_backbone_when_installed():
    pytest.importorskip("detectron2")
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.update(detectron2_resnet_config(depth=50, width_multiplier=0.125))
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    model = convert_vissl_to_detectron2(ResNeXt(depth=50, width_multiplier=0.125).state_dict())["model"]
    backbone.load_state_dict({k: torch.from_numpy(v) for k, v in model.items()}, strict=True)
