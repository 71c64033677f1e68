"""The convert component: python_func on a tiny engine checkpoint, and one kfp.local run."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from kfp import dsl

from components.convert import convert
from tests.components.local_run import run_component_locally
from tests.convert.helpers import write_engine_checkpoint


@pytest.fixture(scope="module")
def pretrain_output(tmp_path_factory):
    """A directory like the pretrain component's output: checkpoints + the checkpoint.torch link."""
    root = tmp_path_factory.mktemp("pretrain") / "model"
    _, model = write_engine_checkpoint(root)
    return root, model


def _artifact(path: Path, metadata=None):
    return dsl.Model(name=path.name, uri=str(path), metadata=dict(metadata or {}))


def test_python_func_writes_torchvision_weights(tmp_path, pretrain_output):
    root, model = pretrain_output
    out = _artifact(tmp_path / "converted")
    convert.python_func(checkpoint=_artifact(root, {"checkpoint_file": "model_final_checkpoint_phase0.torch"}),
                        converted=out, target="torchvision", source="sslcore", allow_pickle=False,
                        caffe2_variant="alexnet_bvlc")
    assert out.metadata["checkpoint_file"] == "converted.pth" and out.metadata["format"] == "torchvision"
    state = torch.load(tmp_path / "converted" / "converted.pth", weights_only=True)
    assert out.metadata["num_tensors"] == len(state)
    assert torch.equal(state["layer3.0.downsample.0.weight"],
                       model.trunk.state_dict()["_feature_blocks.layer3.0.downsample.0.weight"])


def test_python_func_refuses_an_unsupported_pair(tmp_path, pretrain_output):
    root, _ = pretrain_output
    with pytest.raises(ValueError, match="supported pairs"):
        convert.python_func(checkpoint=_artifact(root), converted=_artifact(tmp_path / "c"),
                            target="torchvision", source="caffe2", allow_pickle=True,
                            caffe2_variant="alexnet_bvlc")


def test_runs_through_kfp_local_to_detectron2(tmp_path, pretrain_output):
    root, model = pretrain_output
    outputs = run_component_locally(convert, tmp_path, artifacts={"checkpoint": (dsl.Model, root)},
                                    target="detectron2")
    with open(outputs["converted"] / "converted.pkl", "rb") as handle:
        d2 = pickle.load(handle)
    assert d2["matching_heuristics"] is True
    np.testing.assert_array_equal(d2["model"]["stem.conv1.weight"],
                                  model.trunk.state_dict()["_feature_blocks.conv1.weight"].numpy())
