"""Every benchmark recipe composes, builds its model, and gives one output per declared meter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslcore.config import compose_config
from sslcore.config.infer import infer_config
from sslcore.engine.meters import build_accuracy_meter
from sslcore.models import build_model

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "sslcore" / "config"
# the through-the-trunk benchmarks trained by the engine (other benchmark recipes live beside them)
TREES = ("linear_image_classification", "fulltune", "semi_supervised")
RECIPES = sorted(str(p.relative_to(CONFIG_ROOT).with_suffix(""))
                 for tree in TREES for p in (CONFIG_ROOT / "benchmark" / tree).rglob("*.yaml"))
SIZES = {"fashion_mnist": 28, "imagenet1k": 224}


def test_the_benchmark_tree_has_linear_fulltune_and_semi_supervised_recipes():
    names = {Path(r).name for r in RECIPES}
    for name in ("eval_resnet_fashion_mnist_linear", "quick_eval_resnet_fashion_mnist_linear",
                 "eval_resnet_8gpu_transfer_in1k_linear", "eval_resnet_fashion_mnist_fulltune",
                 "eval_resnet_8gpu_transfer_in1k_fulltune", "eval_resnet_fashion_mnist_semi_sup_per01",
                 "eval_resnet_fashion_mnist_semi_sup_per10"):
        assert name in names, name


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_and_its_model_gives_one_output_per_meter(recipe):
    cfg = compose_config([f"config={recipe}"])
    resolved, _ = infer_config(cfg, world_size=1, local_world_size=1, cuda_available=False)
    assert resolved.TEST_MODEL and resolved.METERS.name == "accuracy_list_meter"
    assert resolved.LOSS.name == "cross_entropy_multiple_output_single_target"
    if resolved.OPTIMIZER.head_optimizer_params.use_different_lr:
        assert resolved.OPTIMIZER.param_schedulers.lr_head.name
    if "imagenet1k" in recipe:
        # ResNet-50 at 224 px is too slow for 2 CPU cores: check VISSL's head widths instead
        heads = [h[1]["dims"] for h in resolved.MODEL.HEAD.PARAMS]
        assert resolved.MODEL.TRUNK.RESNETS.DEPTH == 50
        assert len(heads) == int(resolved.METERS.accuracy_list_meter.num_meters)
        expected = ([[9216, 1000], [9216, 1000], [8192, 1000], [9216, 1000], [8192, 1000]]
                    if "linear" in recipe else [[2048, 1000]])
        assert heads == expected
        return
    model = build_model(resolved.MODEL).eval()
    size = SIZES[next(k for k in SIZES if k in recipe)]
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, size, size))
    meter = build_accuracy_meter(resolved)
    assert len(outputs) == len(meter.names) == int(resolved.METERS.accuracy_list_meter.num_meters)
    classes = 10 if "fashion_mnist" in recipe else 1000
    assert all(out.shape == (2, classes) for out in outputs)
    frozen = bool(resolved.MODEL.FEATURE_EVAL_SETTINGS.FREEZE_TRUNK_ONLY)
    assert model.is_trunk_frozen == frozen
    assert resolved.METERS.benchmark_name == ("linear_eval" if frozen else "finetune")


def test_quick_linear_recipe_keeps_the_full_recipes_probes():
    full = compose_config(["config=benchmark/linear_image_classification/fashion_mnist/"
                           "eval_resnet_fashion_mnist_linear"])
    quick = compose_config(["config=benchmark/linear_image_classification/fashion_mnist/"
                            "quick_eval_resnet_fashion_mnist_linear"])
    assert quick.MODEL == full.MODEL and quick.DATA.TRAIN.TRANSFORMS == full.DATA.TRAIN.TRANSFORMS
    assert quick.OPTIMIZER.num_epochs == 1 and quick.DATA.TRAIN.DATA_LIMIT == 256
