"""The train engine's test phase on real Fashion-MNIST: the quick widened-linear recipe trains one
epoch through a frozen trunk; every layer's top-1/top-5 in metrics.json equals a plain recount
from the saved model, and the trunk (BatchNorm statistics included) is unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sslcore.benchmarks.metrics import read_metrics, topk_accuracy
from sslcore.config import compose_config
from sslcore.engine import checkpoint as ckpt
from sslcore.engine.launcher import run_engine
from sslcore.models import build_model

pytestmark = pytest.mark.slow  # one real training epoch + a recount: ~40 s on 2 busy cores

QUICK = "config=benchmark/linear_image_classification/fashion_mnist/quick_eval_resnet_fashion_mnist_linear"
LAYERS = ["res2", "res3", "res4", "res5", "res5avg"]


def _data(root):
    out = []
    for split in ("TRAIN", "TEST"):
        prefix = root / split.lower()
        out += [f"config.DATA.{split}.DATA_PATHS=[{prefix}_images.npy]",
                f"config.DATA.{split}.LABEL_PATHS=[{prefix}_labels.npy]"]
    return out


def _pretend_pretrained(path):
    """A 'pretrained' trunk: seeded random weights and non-trivial BatchNorm statistics."""
    cfg = compose_config(["config=pretrain/simclr/simclr_fashion_mnist_cpu"])
    torch.manual_seed(123)
    model = build_model(cfg.MODEL)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.1, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    torch.save({"classy_state_dict": {"base_model": ckpt.model_state(model)}}, path)
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("trunk.")}


def test_quick_linear_trains_through_frozen_trunk_and_reports_each_layer(tmp_path, fmnist_small):
    trunk_before = _pretend_pretrained(tmp_path / "pretrained.torch")
    overrides = [QUICK, *_data(fmnist_small), f"config.CHECKPOINT.DIR={tmp_path / 'run'}",
                 f"config.MODEL.WEIGHTS_INIT.PARAMS_FILE={tmp_path / 'pretrained.torch'}"]
    final = run_engine(overrides, "train")

    state = ckpt.flat_model_state(torch.load(final, weights_only=True)["classy_state_dict"]["base_model"])
    for key, before in trunk_before.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(state[key], before), f"{key} changed in a frozen-trunk probe"

    metrics = read_metrics(tmp_path / "run")
    assert metrics["benchmark"] == "linear_eval"
    assert [(r["layer"], r["name"]) for r in metrics["records"]] == [
        (layer, name) for layer in LAYERS for name in ("top1", "top5")]
    params = metrics["records"][0]["params"]
    assert params["epochs"] == 1 and params["trunk_frozen"] is True
    assert params["schedule"] == "multistep" and params["batch_size"] == 32
    assert [entry[0] for entry in params["pool_ops"]] == LAYERS
    assert metrics["sizes"] == {"num_train": 256, "num_test": 128}

    # recount from the saved model, independently of the meter
    cfg = compose_config(overrides)
    model = build_model(cfg.MODEL)
    model.load_state_dict(state)
    model.eval()
    from sslcore.data import build_dataset

    test = build_dataset(cfg, "TEST")
    images = torch.stack([test[i]["data"][0] for i in range(len(test))])
    labels = np.array([int(np.ravel(test[i]["label"])[0]) for i in range(len(test))])
    with torch.no_grad():
        logits = model(images)
    got = {(r["layer"], r["name"]): r["value"] for r in metrics["records"]}
    for layer, scores in zip(LAYERS, logits):
        expected = topk_accuracy(scores.numpy(), labels, ks=(1, 5))
        assert got[(layer, "top1")] == pytest.approx(expected["top1"], abs=1e-4)
        assert got[(layer, "top5")] == pytest.approx(expected["top5"], abs=1e-4)

    lines = [json.loads(line) for line in (tmp_path / "run" / "meters.json").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["epoch"] == 1
    assert sorted(lines[0]["train_accuracy_list_meter"]) == sorted(LAYERS)
    for layer in LAYERS:
        for name in ("top1", "top5"):
            assert lines[0]["test_accuracy_list_meter"][layer][name] == pytest.approx(got[(layer, name)])

    # TEST_ONLY restores the final checkpoint from CHECKPOINT.DIR and measures the same numbers
    path = run_engine(overrides + ["config.TEST_ONLY=true"], "train")
    again = read_metrics(path)
    assert [(r["layer"], r["name"], r["value"]) for r in again["records"]] == [
        (r["layer"], r["name"], r["value"]) for r in metrics["records"]]
