"""The through-the-trunk benchmark runner: schedule rescaling, argument errors, and a real
semi-supervised fine-tuning run on a seeded 10 % subset of Fashion-MNIST (trunk and head on their
own learning rates), its metrics, its report section and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sslcore.benchmarks.finetune import recipe_for, rescale_epoch_schedule, run_finetune_benchmark
from sslcore.cli import main
from sslcore.config import compose_config
from sslcore.engine import checkpoint as ckpt
from sslcore.models import build_model
from sslcore.report.sections import render_section

QUICK_FULLTUNE = "benchmark/fulltune/fashion_mnist/quick_eval_resnet_fashion_mnist_fulltune"


def test_multistep_milestones_follow_the_epoch_budget():
    lr = {"name": "multistep", "values": [0.1, 0.01, 0.001], "milestones": [4, 6],
          "update_interval": "epoch"}
    assert rescale_epoch_schedule(lr, 8, 4)["milestones"] == [2, 3]
    assert rescale_epoch_schedule(lr, 8, 4)["values"] == [0.1, 0.01, 0.001]
    short = rescale_epoch_schedule(lr, 8, 2)
    assert short["milestones"] == [1] and short["values"] == [0.1, 0.01]  # 6 -> 1.5 -> 2 dropped
    assert rescale_epoch_schedule(lr, 8, 1) == {**lr, "milestones": [], "values": [0.1]}
    cosine = {"name": "cosine", "start_value": 0.1, "end_value": 0.0}
    assert rescale_epoch_schedule(cosine, 8, 2) == cosine


def test_recipes_and_argument_errors(tmp_path):
    assert recipe_for("semi_supervised", 0.01).endswith("semi_sup_per01")
    assert recipe_for("semi_supervised", 0.1).endswith("semi_sup_per10")
    assert recipe_for("linear").endswith("eval_resnet_fashion_mnist_linear")
    with pytest.raises(ValueError, match="mode='svm' is unknown"):
        recipe_for("svm")
    with pytest.raises(FileNotFoundError, match="sslcore data prepare"):
        run_finetune_benchmark(tmp_path, tmp_path / "out", mode="fulltune")
    assert main(["benchmark", "finetune", "--out", str(tmp_path / "out")]) == 2


def _train_subset_size(data, fraction):
    labels = np.load(data / "train_labels.npy")
    return sum(max(1, int(round(fraction * int((labels == c).sum())))) for c in np.unique(labels))


@pytest.mark.slow  # one real fine-tuning epoch on the subset + the 128-image test: ~30 s
def test_semi_supervised_trains_on_the_subset_with_trunk_and_head_lrs(tmp_path, fmnist_small, capsys):
    cfg = compose_config(["config=pretrain/simclr/simclr_fashion_mnist_cpu"])
    torch.manual_seed(3)
    pretrained = build_model(cfg.MODEL)
    torch.save({"classy_state_dict": {"base_model": ckpt.model_state(pretrained)}},
               tmp_path / "pretrained.torch")
    out = tmp_path / "semi"
    metrics = run_finetune_benchmark(fmnist_small, out, checkpoint=tmp_path / "pretrained.torch",
                                     mode="semi_supervised", fraction=0.1, seed=4,
                                     recipe=QUICK_FULLTUNE)
    size = _train_subset_size(fmnist_small, 0.1)
    subset = json.loads((out / "subset" / "subset.json").read_text())
    assert subset["num_samples"] == size and subset["seed"] == 4
    assert metrics["benchmark"] == "finetune" and metrics["sizes"]["num_train"] == size
    assert [(r["layer"], r["name"]) for r in metrics["records"]] == [("res5avg", "top1"),
                                                                     ("res5avg", "top5")]
    params = metrics["records"][0]["params"]
    assert params["mode"] == "semi_supervised" and params["fraction"] == 0.1
    assert params["lr"] == pytest.approx(0.01 * 32 / 256)  # auto_lr_scaling of both schedules
    assert params["head_lr"] == pytest.approx(0.1 * 32 / 256)
    log = [json.loads(line) for line in (out / "run" / "stdout.json").read_text().splitlines()]
    assert log[-1]["iteration"] == size // 32  # one epoch over the subset only (DROP_LAST)

    final = torch.load(out / "run" / "checkpoint.torch", weights_only=True)
    groups = final["classy_state_dict"]["optimizer"]["param_groups"]
    assert {g["head"] for g in groups} == {True, False}
    for group in groups:
        assert group["lr"] == pytest.approx(params["head_lr"] if group["head"] else params["lr"])
    trunk = final["classy_state_dict"]["base_model"]["model"]["trunk"]
    before = ckpt.model_state(pretrained)["model"]["trunk"]
    assert not torch.equal(trunk["_feature_blocks.conv1.weight"], before["_feature_blocks.conv1.weight"])

    html = render_section("finetune", out)
    assert html.startswith("<section>") and "res5avg" in html and "<svg" in html
    assert f"{metrics['records'][0]['value']:.2f}" in html
    assert (out / "meters.json").is_file()
