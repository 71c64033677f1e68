"""`sslcore convert` and convert_checkpoint_file: every pair writes a file its framework can use."""

import pickle

import numpy as np
import pytest
import torch

from sslcore.cli import main
from sslcore.convert import SUPPORTED_PAIRS, convert_checkpoint_file
from sslcore.convert.torchvision import build_torchvision_resnet, trunk_settings_from_checkpoint
from sslcore.engine.checkpoint import init_model_from_weights
from sslcore.models.trunks.alexnet import AlexNet
from tests.convert.helpers import write_engine_checkpoint


@pytest.fixture(scope="module")
def engine_checkpoint(tmp_path_factory):
    return write_engine_checkpoint(tmp_path_factory.mktemp("run"))


def test_cli_sslcore_to_torchvision_loads_into_the_matching_resnet(tmp_path, engine_checkpoint, capsys):
    path, model = engine_checkpoint
    out = tmp_path / "tv.pth"
    assert main(["convert", "--from", "sslcore", "--to", "torchvision", str(path), str(out)]) == 0
    printed = capsys.readouterr().out
    state = torch.load(out, weights_only=True)
    assert f"{len(state)} tensors" in printed and "conv1.weight" in printed
    settings = trunk_settings_from_checkpoint(torch.load(path, weights_only=True))
    tv = build_torchvision_resnet(**settings).eval()
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tv(x), model.trunk(x)[0], atol=1e-5, rtol=1e-5)


def test_cli_chain_back_to_sslcore_loads_through_weights_init(tmp_path, engine_checkpoint):
    path, model = engine_checkpoint
    assert main(["convert", "--from", "sslcore", "--to", "classy_vision", str(path), str(tmp_path / "cv.torch")]) == 0
    assert main(["convert", "--from", "classy_vision", "--to", "sslcore", str(tmp_path / "cv.torch"),
                 str(tmp_path / "back.torch")]) == 0
    _, fresh = write_engine_checkpoint(tmp_path / "other", seed=1)
    summary = init_model_from_weights(fresh, str(tmp_path / "back.torch"))
    assert sorted(summary["missing"]) == ["heads.0.clf.0.bias", "heads.0.clf.0.weight"]  # trunk only
    for key, value in model.trunk.state_dict().items():
        if "num_batches_tracked" not in key:
            assert torch.equal(fresh.trunk.state_dict()[key], value), key


def test_detectron2_output_is_a_pickle_of_arrays(tmp_path, engine_checkpoint):
    path, model = engine_checkpoint
    summary = convert_checkpoint_file(path, tmp_path / "d2.pkl", source="sslcore", target="detectron2")
    with open(tmp_path / "d2.pkl", "rb") as handle:
        d2 = pickle.load(handle)
    assert summary["num_tensors"] == len(d2["model"])
    np.testing.assert_array_equal(d2["model"]["res5.1.conv2.norm.running_var"],
                                  model.trunk.state_dict()["_feature_blocks.layer4.1.bn2.running_var"].numpy())
    with pytest.raises(ValueError, match=r"\*\.pkl"):
        convert_checkpoint_file(path, tmp_path / "d2.pth", source="sslcore", target="detectron2")


def test_unsupported_pairs_and_pickles_fail_with_the_fix(tmp_path, engine_checkpoint, capsys):
    path, _ = engine_checkpoint
    assert ("caffe2", "torchvision") not in SUPPORTED_PAIRS
    assert main(["convert", "--from", "caffe2", "--to", "torchvision", str(path), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "not supported" in err and "caffe2->sslcore" in err and "sslcore->detectron2" in err

    blobs = tmp_path / "c2.pkl"
    trunk = AlexNet(variant="alexnet_bvlc").state_dict()
    layout = {1: 0, 2: 2, 3: 4, 4: 5, 5: 6}
    with open(blobs, "wb") as handle:
        pickle.dump({"blobs": {f"conv{k}_{s}": trunk[f"_feature_blocks.{b}.0.{n}"].numpy()
                               for k, b in layout.items() for s, n in (("w", "weight"), ("b", "bias"))}}, handle)
    args = ["convert", "--from", "caffe2", "--to", "sslcore", str(blobs), str(tmp_path / "alex.torch")]
    assert main(args) == 2
    assert "--allow-pickle" in capsys.readouterr().err and not (tmp_path / "alex.torch").exists()
    assert main(args + ["--allow-pickle"]) == 0
    loaded = torch.load(tmp_path / "alex.torch", weights_only=True)
    assert loaded["config"]["MODEL"]["TRUNK"]["NAME"] == "alexnet_bvlc"
    conv1 = loaded["classy_state_dict"]["base_model"]["model"]["trunk"]["_feature_blocks.0.0.weight"]
    assert torch.equal(conv1, trunk["_feature_blocks.0.0.weight"].flip(1))  # BGR -> RGB
