"""MODEL.WEIGHTS_INIT (VISSL semantics): key name, prefixes, skipped layers, and the load summary."""

import logging

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.models import resnet18

from sslcore.config import compose_config
from sslcore.engine.checkpoint import init_model_from_weights, save_checkpoint
from sslcore.models import build_model

THIN = ["config.MODEL.TRUNK.RESNETS.DEPTH=18", "config.MODEL.TRUNK.RESNETS.WIDTH_MULTIPLIER=0.125",
        "config.MODEL.TRUNK.RESNETS.STEM=small", 'config.MODEL.HEAD.PARAMS=[["mlp",{dims:[64,16]}]]']


@pytest.fixture(scope="module")
def cfg():
    return compose_config(THIN)


def _model(cfg, seed):
    torch.manual_seed(seed)
    return build_model(cfg.MODEL)


def _engine_checkpoint(cfg, model, path):
    """A checkpoint written exactly as the training engine writes one."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return save_checkpoint(path, model=model, optimizer=optimizer, method_state={}, phase_idx=0,
                           iteration=1, phase_complete=True, iteration_in_phase=1,
                           config=OmegaConf.to_container(cfg, resolve=True))


def test_engine_checkpoint_loads_every_key(cfg, tmp_path, caplog):
    source, target = _model(cfg, 0), _model(cfg, 1)
    path = _engine_checkpoint(cfg, source, tmp_path / "model_final_checkpoint_phase0.torch")
    with caplog.at_level(logging.INFO, logger="sslcore.engine.checkpoint"):
        summary = init_model_from_weights(target, str(path))
    expected_skipped = sorted(k for k in source.state_dict() if "num_batches_tracked" in k)
    assert sorted(summary["skipped"]) == expected_skipped
    assert sorted(summary["loaded"]) == sorted(set(source.state_dict()) - set(expected_skipped))
    assert summary["missing"] == [] and summary["unexpected"] == []
    for key, value in source.state_dict().items():
        if "num_batches_tracked" not in key:
            assert torch.equal(target.state_dict()[key], value), key
    assert f"{len(summary['loaded'])} loaded, {len(expected_skipped)} skipped, 0 missing" in caplog.text


def test_skip_layers_keep_the_models_own_weights(cfg, tmp_path):
    source, target = _model(cfg, 0), _model(cfg, 1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    path = _engine_checkpoint(cfg, source, tmp_path / "ckpt.torch")
    summary = init_model_from_weights(target, str(path), skip_layers=["num_batches_tracked", "heads."])
    assert all(k.startswith("heads.") or "num_batches_tracked" in k for k in summary["skipped"])
    assert torch.equal(target.state_dict()["heads.0.clf.0.weight"], before["heads.0.clf.0.weight"])
    assert torch.equal(target.state_dict()["trunk._feature_blocks.conv1.weight"],
                       source.state_dict()["trunk._feature_blocks.conv1.weight"])
    assert summary["missing"] == []  # skipped keys are not reported missing


def test_torchvision_file_with_append_prefix_and_flat_state(tmp_path):
    """VISSL's recipe for torchvision weights: STATE_DICT_KEY_NAME '' and APPEND_PREFIX."""
    cfg = compose_config(["config.MODEL.TRUNK.RESNETS.DEPTH=18", 'config.MODEL.HEAD.PARAMS=[["mlp",{dims:[512,16]}]]'])
    torch.manual_seed(0)
    tv = resnet18(num_classes=4)
    path = tmp_path / "tv.pth"
    torch.save({f"module.{k}": v for k, v in tv.state_dict().items()}, path)
    target = _model(cfg, 1)
    summary = init_model_from_weights(target, str(path), state_dict_key_name="", remove_prefix="module.",
                                      append_prefix="trunk._feature_blocks.")
    assert sorted(summary["unexpected"]) == ["trunk._feature_blocks.fc.bias", "trunk._feature_blocks.fc.weight"]
    assert sorted(summary["missing"]) == ["heads.0.clf.0.bias", "heads.0.clf.0.weight"]
    assert torch.equal(target.state_dict()["trunk._feature_blocks.layer4.1.bn2.running_var"],
                       tv.state_dict()["layer4.1.bn2.running_var"])


def test_errors_name_the_key_to_change(cfg, tmp_path):
    source = _model(cfg, 0)
    path = _engine_checkpoint(cfg, source, tmp_path / "ckpt.torch")
    with pytest.raises(ValueError, match="STATE_DICT_KEY_NAME='model_state_dict'"):
        init_model_from_weights(_model(cfg, 1), str(path), state_dict_key_name="model_state_dict")
    with pytest.raises(ValueError, match="REMOVE_PREFIX/APPEND_PREFIX"):
        init_model_from_weights(_model(cfg, 1), str(path), append_prefix="backbone.")
    other = build_model(compose_config(THIN[:1] + ["config.MODEL.TRUNK.RESNETS.WIDTH_MULTIPLIER=0.25"] + THIN[2:3]
                                       + ['config.MODEL.HEAD.PARAMS=[["mlp",{dims:[128,16]}]]']).MODEL)
    with pytest.raises(ValueError, match="has shape"):
        init_model_from_weights(other, str(path))
