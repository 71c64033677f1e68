"""The mlp head's options against plain computations, and VISSL's four MODEL.HEAD.PARAMS cases.

VISSL's defaults.yaml documents: Case 1 one head; Case 2 a chain of head modules on one input;
Case 3 several head chains (nested lists, one nn.Sequential each), used with
MULTI_INPUT_HEAD_MAPPING; Case 4 one eval_mlp per evaluated trunk feature.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslcore.config import compose_config
from sslcore.models import build_model
from sslcore.models.heads import build_heads
from sslcore.models.heads.mlp import MLP

TINY = ["config.MODEL.TRUNK.RESNETS.DEPTH=18", "config.MODEL.TRUNK.RESNETS.WIDTH_MULTIPLIER=0.125",
        "config.MODEL.TRUNK.RESNETS.STEM=small", "config.MODEL.TRUNK.RESNETS.NORM=GroupNorm"]
D = 64  # flatten / res5avg width of the tiny trunk


def _types(head):
    return [type(m).__name__ for m in head.clf]


@pytest.mark.parametrize("kwargs, expected", [
    ({}, ["Linear", "Linear"]),
    ({"use_relu": True}, ["Linear", "ReLU", "Linear"]),
    ({"use_bn": True, "use_relu": True, "use_dropout": True},
     ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]),
    ({"use_bn": True, "use_relu": True, "skip_last_layer_relu_bn": False},
     ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU"]),
    ({"use_bn": True}, ["Linear", "BatchNorm1d", "Linear"]),
])
def test_mlp_layer_order(kwargs, expected):
    head = MLP([8, 16, 4], **kwargs)
    assert _types(head) == expected


def test_mlp_matches_a_plain_computation():
    torch.manual_seed(0)
    head = MLP([8, 16, 4], use_bn=True, use_relu=True, use_bias=False, batchnorm_eps=1e-3)
    x = torch.randn(10, 8, 1, 1)
    lin1, bn, _, lin2 = head.clf
    assert lin1.bias is None and lin2.bias is None
    h = x.flatten(1) @ lin1.weight.t()
    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-3) * bn.weight + bn.bias
    expected = F.relu(h) @ lin2.weight.t()
    torch.testing.assert_close(head(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head([x]), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one feature tensor"):
        head([x, x])
    with pytest.raises(ValueError, match="built for 8 input features"):
        head(torch.randn(2, 9))


def test_mlp_params_multiplier_scales_the_initial_weights():
    torch.manual_seed(1)
    base = MLP([8, 4])
    torch.manual_seed(1)
    scaled = MLP([8, 4], params_multiplier=0.5)
    torch.testing.assert_close(scaled.clf[0].weight, 0.5 * base.clf[0].weight)
    torch.testing.assert_close(scaled.clf[0].bias, 0.5 * base.clf[0].bias)
    with pytest.raises(ValueError, match="params_multiplier"):
        MLP([8, 4], params_multiplier=0.0)


def _model(*overrides):
    return build_model(compose_config(TINY + list(overrides)).MODEL)


def test_case1_single_head():
    torch.manual_seed(0)
    model = _model(f"config.MODEL.HEAD.PARAMS=[[mlp, {{dims: [{D}, 16]}}]]")
    x = torch.randn(4, 3, 16, 16)
    (out,) = model(x)
    torch.testing.assert_close(out, model.heads[0](model.trunk(x)[0]))
    assert out.shape == (4, 16)
    assert "heads.0.clf.0.weight" in model.state_dict()


def test_case2_chain_of_head_modules_on_one_input():
    torch.manual_seed(0)
    model = _model(f"config.MODEL.HEAD.PARAMS=[[mlp, {{dims: [{D}, 10], use_bn: false, use_relu: false}}], "
                   "[siamese_concat_view, {num_towers: 3}], [mlp, {dims: [30, 8]}]]")
    x = torch.randn(2 * 3, 3, 16, 16)  # 2 samples x 3 towers, sample-major
    (out,) = model(x)
    assert out.shape == (2, 8)
    per_tower = model.heads[0](model.trunk(x)[0])
    expected = model.heads[2](per_tower.reshape(2, 30))
    torch.testing.assert_close(out, expected)


def test_case3_several_head_chains_with_an_input_mapping():
    torch.manual_seed(0)
    model = _model(
        f"config.MODEL.HEAD.PARAMS=[[[mlp, {{dims: [{D}, 10]}}], [siamese_concat_view, {{num_towers: 3}}], "
        f"[mlp, {{dims: [30, 8]}}]], [[mlp, {{dims: [{D}, 8]}}]]]",
        "config.MODEL.MULTI_INPUT_HEAD_MAPPING=[[patches, [flatten]], [images, [flatten]]]")
    assert len(model.heads) == 2 and all(isinstance(h, nn.Sequential) for h in model.heads)
    keys = model.state_dict()
    assert "heads.0.0.clf.0.weight" in keys and "heads.0.2.clf.0.weight" in keys
    assert "heads.1.0.clf.0.weight" in keys
    patches, images = torch.randn(2 * 3, 3, 16, 16), torch.randn(2, 3, 16, 16)
    out_patches, out_images = model({"patches": patches, "images": images})
    assert out_patches.shape == out_images.shape == (2, 8)
    torch.testing.assert_close(out_patches, model.heads[0](model.trunk(patches)[0]))
    torch.testing.assert_close(out_images, model.heads[1](model.trunk(images)[0]))


def test_case4_one_eval_head_per_feature():
    torch.manual_seed(0)
    pool = [["res4", ["AdaptiveAvgPool2d", [[2, 2]]]], ["res5", ["AdaptiveAvgPool2d", [[1, 1]]]],
            ["res5avg", ["Identity", []]]]
    dims = [32 * 4, D, D]
    heads = ", ".join(f"[eval_mlp, {{in_channels: {d}, dims: [{d}, 5]}}]" for d in dims)
    model = _model("config.MODEL.FEATURE_EVAL_SETTINGS.EVAL_MODE_ON=true",
                   "config.MODEL.FEATURE_EVAL_SETTINGS.FREEZE_TRUNK_ONLY=true",
                   f"config.MODEL.FEATURE_EVAL_SETTINGS.LINEAR_EVAL_FEAT_POOL_OPS_MAP={pool}",
                   f"config.MODEL.HEAD.PARAMS=[{heads}]")
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(3, 5)] * 3
    feats = model.extract_trunk_features(x)
    for out, head, feat in zip(outs, model.heads, feats.values()):
        torch.testing.assert_close(out, head(feat))
    with pytest.raises(ValueError, match="one head per feature"):
        _model("config.MODEL.FEATURE_EVAL_SETTINGS.EVAL_MODE_ON=true",
               f"config.MODEL.FEATURE_EVAL_SETTINGS.LINEAR_EVAL_FEAT_POOL_OPS_MAP={pool}",
               f"config.MODEL.HEAD.PARAMS=[[eval_mlp, {{in_channels: {D}, dims: [{D}, 5]}}]]")(x)


def test_nested_entry_builds_a_sequential():
    cfg = compose_config([f"config.MODEL.HEAD.PARAMS=[[[mlp, {{dims: [{D}, 8]}}], [mlp, {{dims: [8, 4]}}]]]"])
    (head,) = build_heads(cfg.MODEL.HEAD)
    assert isinstance(head, nn.Sequential) and len(head) == 2
    assert head(torch.randn(2, D)).shape == (2, 4)
