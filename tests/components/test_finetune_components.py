"""The linear_eval and finetune components: python_func called directly on a tiny real subset, and
linear_eval run once through kfp.local (SubprocessRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from kfp import dsl

from components.finetune import finetune
from components.linear_eval import linear_eval
from local_run import run_component_locally
from sslcore.config import compose_config
from sslcore.engine import checkpoint as ckpt
from sslcore.models import build_model

pytestmark = pytest.mark.slow  # real training runs of the engine (tiny subsets): ~30-60 s each

TINY = ["config.DATA.TRAIN.DATA_LIMIT=64", "config.DATA.TEST.DATA_LIMIT=64"]
LAYERS = ["res2", "res3", "res4", "res5", "res5avg"]


def _artifact(cls, path: Path, **metadata):
    return cls(name=path.name, uri=str(path), metadata=dict(metadata))


def _pretrained_model_dir(root: Path) -> Path:
    cfg = compose_config(["config=pretrain/simclr/simclr_fashion_mnist_cpu"])
    torch.manual_seed(9)
    model = build_model(cfg.MODEL)
    root.mkdir(parents=True)
    torch.save({"classy_state_dict": {"base_model": ckpt.model_state(model)}}, root / "final.torch")
    return root


def test_finetune_python_func_fulltunes_from_the_model_artifact(tmp_path, fmnist_small):
    model_dir = _pretrained_model_dir(tmp_path / "model")
    metrics = _artifact(dsl.Metrics, tmp_path / "metrics")
    finetune.python_func(
        dataset=_artifact(dsl.Dataset, fmnist_small), metrics=metrics,
        checkpoint=_artifact(dsl.Model, model_dir, checkpoint_file="final.torch"),
        mode="fulltune", fraction=0.0, epochs=1,
        recipe="benchmark/fulltune/fashion_mnist/quick_eval_resnet_fashion_mnist_fulltune",
        overrides=TINY, seed=0)
    result = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
    assert result["benchmark"] == "finetune" and result["mode"] == "fulltune"
    assert result["records"][0]["params"]["weights"].endswith("final.torch")
    assert result["sizes"] == {"num_train": 64, "num_test": 64}
    assert set(metrics.metadata) == {"res5avg_top1", "res5avg_top5"}
    assert metrics.metadata["res5avg_top1"] == pytest.approx(result["records"][0]["value"])
    assert not list((tmp_path / "metrics" / "run").glob("*.torch"))  # model files removed


def test_linear_eval_runs_through_kfp_local(tmp_path, fmnist_small):
    outputs = run_component_locally(
        linear_eval, tmp_path, artifacts={"dataset": (dsl.Dataset, fmnist_small)},
        epochs=1, recipe="benchmark/linear_image_classification/fashion_mnist/"
                         "quick_eval_resnet_fashion_mnist_linear", overrides=TINY, seed=0)
    result = json.loads((Path(outputs["metrics"]) / "metrics.json").read_text())
    assert result["benchmark"] == "linear_eval"
    assert [(r["layer"], r["name"]) for r in result["records"]] == [
        (layer, name) for layer in LAYERS for name in ("top1", "top5")]
    assert result["records"][0]["params"]["weights"] == "random init"
    assert (Path(outputs["metrics"]) / "meters.json").is_file()
