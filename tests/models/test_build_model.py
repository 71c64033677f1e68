"""build_model from composed configs: pretraining chains, feature evaluation, freezing, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sslcore.config import compose_config
from sslcore.losses import build_loss
from sslcore.models import BaseSSLMultiInputOutputModel, build_model
from sslcore.models.feature_eval import build_feature_pool_ops
from sslcore.models.heads.eval_mlp import LinearEvalMLP

RECIPE = Path(__file__).parent / "recipes" / "tiny_simclr_model.yaml"
THIN = ["config.MODEL.TRUNK.RESNETS.DEPTH=18", "config.MODEL.TRUNK.RESNETS.WIDTH_MULTIPLIER=0.25",
        "config.MODEL.TRUNK.RESNETS.STEM=small"]
# linear probes on two layers: res5avg (128 channels) and res4 (64 channels) pooled to 2x2
LINEAR_EVAL = THIN + [
    "config.MODEL.FEATURE_EVAL_SETTINGS.EVAL_MODE_ON=true",
    "config.MODEL.FEATURE_EVAL_SETTINGS.FREEZE_TRUNK_ONLY=true",
    'config.MODEL.FEATURE_EVAL_SETTINGS.LINEAR_EVAL_FEAT_POOL_OPS_MAP='
    '[["res5avg",["Identity",[]]],["res4",["AdaptiveAvgPool2d",[[2,2]]]]]',
    'config.MODEL.HEAD.PARAMS=[["eval_mlp",{in_channels:128,dims:[128,10]}],'
    '["eval_mlp",{in_channels:256,dims:[256,10]}]]',
]


def test_simclr_recipe_builds_a_chained_projection_head_and_trains():
    cfg = compose_config([f"config={RECIPE}"])
    model = build_model(cfg.MODEL)
    assert isinstance(model, BaseSSLMultiInputOutputModel) and len(model.heads) == 2
    keys = list(model.state_dict())
    assert "trunk._feature_blocks.layer1.0.conv1.weight" in keys
    assert "heads.0.clf.0.weight" in keys and "heads.1.clf.0.weight" in keys
    assert all(k.startswith(("trunk._feature_blocks.", "heads.")) for k in keys)

    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    (embedding,) = model(torch.cat(views))
    assert embedding.shape == (8, 32)
    loss = build_loss(cfg.LOSS)(embedding)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_list_of_views_is_concatenated_view_major():
    torch.manual_seed(0)
    model = build_model(compose_config([f"config={RECIPE}"]).MODEL).eval()
    small = [torch.randn(2, 3, 32, 32) for _ in range(2)] + [torch.randn(2, 3, 16, 16)]
    with torch.no_grad():
        (out,) = model(small)
        expected = torch.cat([model(torch.cat(small[:2]))[0], model(small[2])[0]])
    torch.testing.assert_close(out, expected)


def test_linear_eval_pools_each_feature_and_gives_it_its_own_head():
    torch.manual_seed(0)
    model = build_model(compose_config(LINEAR_EVAL).MODEL)
    assert all(isinstance(h, LinearEvalMLP) for h in model.heads)
    x = torch.randn(4, 3, 32, 32)
    feats = model.extract_trunk_features(x)
    assert list(feats) == ["res5avg", "res4"]
    assert feats["res5avg"].shape == (4, 128) and feats["res4"].shape == (4, 64 * 2 * 2)
    res4 = model.trunk(x, ["res4"])[0]
    torch.testing.assert_close(feats["res4"], nn.functional.adaptive_avg_pool2d(res4, 2).flatten(1))

    outputs = model(x)
    assert [o.shape for o in outputs] == [(4, 10), (4, 10)]
    torch.testing.assert_close(outputs[1], model.heads[1](feats["res4"]))


def test_frozen_trunk_keeps_weights_and_statistics_while_heads_train():
    cfg = compose_config([s.replace("STEM=small", "NORM=BatchNorm") for s in LINEAR_EVAL])
    model = build_model(cfg.MODEL)
    model.train()
    assert model.is_trunk_frozen and not model.trunk.training and model.heads.training
    assert not any(p.requires_grad for p in model.trunk.parameters())
    before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    outputs = model(torch.randn(4, 3, 32, 32))
    sum(o.square().mean() for o in outputs).backward()
    assert all(p.grad is None for p in model.trunk.parameters())
    assert all(p.grad is not None for p in model.heads.parameters())
    after = model.trunk.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched
    assert model.heads[0].channel_bn.num_batches_tracked.item() == 1


def test_extract_trunk_features_only_builds_no_heads():
    model = build_model(compose_config(LINEAR_EVAL + [
        "config.MODEL.FEATURE_EVAL_SETTINGS.FREEZE_TRUNK_ONLY=false",
        "config.MODEL.FEATURE_EVAL_SETTINGS.EXTRACT_TRUNK_FEATURES_ONLY=true"]).MODEL).eval()
    assert len(model.heads) == 0 and model.is_trunk_frozen
    x = torch.randn(2, 3, 32, 32)
    outputs = model(x)
    feats = model.extract_trunk_features(x)
    assert len(outputs) == 2
    for out, feat in zip(outputs, feats.values()):
        torch.testing.assert_close(out, feat)


def test_default_pool_map_is_res5avg_and_fine_tuning_chains_heads():
    model = build_model(compose_config(THIN + [
        "config.MODEL.FEATURE_EVAL_SETTINGS.EVAL_MODE_ON=true",
        "config.MODEL.FEATURE_EVAL_SETTINGS.EVAL_TRUNK_AND_HEAD=true",
        'config.MODEL.HEAD.PARAMS=[["mlp",{dims:[128,64]}],["mlp",{dims:[64,10]}]]']).MODEL)
    x = torch.randn(2, 3, 32, 32)
    assert list(model.extract_trunk_features(x)) == ["res5avg"]
    assert not model.is_trunk_frozen
    (out,) = model(x)
    assert out.shape == (2, 10)


@pytest.mark.parametrize("overrides, match", [
    (["config.MODEL.FEATURE_EVAL_SETTINGS.FREEZE_TRUNK_ONLY=true"], "EVAL_MODE_ON"),
    (["config.MODEL.FEATURE_EVAL_SETTINGS.EVAL_MODE_ON=true",
      'config.MODEL.FEATURE_EVAL_SETTINGS.LINEAR_EVAL_FEAT_POOL_OPS_MAP='
      '[["res5avg",["Identity",[]]],["res5",["Identity",[]]]]',
      'config.MODEL.HEAD.PARAMS=[["mlp",{dims:[128,10]}],["mlp",{dims:[10,10]}],'
      '["mlp",{dims:[10,10]}]]'], "one head per feature"),
])
def test_inconsistent_settings_raise_value_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        model = build_model(compose_config(THIN + overrides).MODEL)
        model(torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("entry, match", [
    (["res6", ["Identity", []]], "no feature 'res6'"),
    (["res4", ["AdaptiveAvgPol2d", [[2, 2]]]], "no module 'AdaptiveAvgPol2d'"),
    (["res4", ["BatchNorm2d", [64]]], "learnable parameters"),
    (["res4", ["AdaptiveAvgPool2d"]], r"\[feature, \[op, \[args\]\]\]"),
    (["res4", ["MaxPool2d", []]], "rejects args"),
])
def test_bad_pool_ops_raise_value_error_naming_the_entry(entry, match):
    names = ["res4", "res5"]
    with pytest.raises(ValueError, match=match) as info:
        build_feature_pool_ops([["res5", ["Identity", []]], entry], names)
    assert "LINEAR_EVAL_FEAT_POOL_OPS_MAP[1]" in str(info.value)
    with pytest.raises(ValueError, match="listed twice"):
        build_feature_pool_ops([["res5", ["Identity", []]], ["res5", ["Identity", []]]], names)
