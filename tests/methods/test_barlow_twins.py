"""Barlow Twins: the loss against the paper's formula written out plainly, its gradient, the
recipes, a 2-epoch run with resume, and a 2-process run against 1 process."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from world_helpers import assert_two_processes_train_like_one
from sslcore.config import compose_config
from sslcore.losses import build_loss
from sslcore.losses.barlow_twins import BarlowTwinsLoss
from sslcore.methods import get_method_class

QUICK = "pretrain/barlow_twins/quick_barlow_twins"
RECIPES = ["pretrain/barlow_twins/barlow_twins_4node_resnet",
           "pretrain/barlow_twins/barlow_twins_fashion_mnist", QUICK]


def plain_barlow_twins(z: np.ndarray, lambda_: float, scale_loss: float, eps: float = 1e-5) -> float:
    """The paper's Eq. 1-2 with loops: z is (2N, D), view 0 of N images then view 1."""
    n = z.shape[0] // 2
    a, b = z[:n], z[n:]
    a = (a - a.mean(0)) / np.sqrt(a.var(0) + eps)  # numpy var: biased, as BatchNorm
    b = (b - b.mean(0)) / np.sqrt(b.var(0) + eps)
    d = z.shape[1]
    total = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[k, i] * b[k, j] for k in range(n)) / n
            total += (1.0 - c_ij) ** 2 if i == j else lambda_ * c_ij ** 2
    return scale_loss * total


@pytest.mark.parametrize("n, d, lambda_, scale", [(8, 4, 0.0051, 0.024), (5, 6, 0.5, 1.0), (16, 3, 0.0, 2.0)])
def test_loss_matches_the_plain_formula(n, d, lambda_, scale):
    torch.manual_seed(n * d)
    z = torch.randn(2 * n, d, dtype=torch.float64) * 3 + 1
    loss = BarlowTwinsLoss(lambda_=lambda_, scale_loss=scale, embedding_dim=d)(z)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(plain_barlow_twins(z.numpy(), lambda_, scale), rel=1e-10)


def test_gradient_matches_finite_differences():
    torch.manual_seed(0)
    z = torch.randn(2 * 6, 4, dtype=torch.float64, requires_grad=True)
    loss_fn = BarlowTwinsLoss(lambda_=0.3, scale_loss=0.5, embedding_dim=4)
    assert torch.autograd.gradcheck(loss_fn, (z,), eps=1e-6, atol=1e-6)


def test_identical_decorrelated_views_give_zero_loss():
    torch.manual_seed(0)
    x = torch.randn(64, 8, dtype=torch.float64)
    x = x - x.mean(0)
    q = torch.linalg.qr(x)[0] * 8  # orthogonal zero-mean columns of variance 1: C = I
    loss = BarlowTwinsLoss(lambda_=0.0051, scale_loss=1.0, embedding_dim=8)(torch.cat([q, q]))
    assert loss.item() < 1e-6
    shuffled = torch.cat([q, q[torch.randperm(64)]])  # views no longer agree
    assert BarlowTwinsLoss(lambda_=0.0051, scale_loss=1.0, embedding_dim=8)(shuffled).item() > 1.0


def test_half_precision_input_and_list_input():
    z = torch.randn(2 * 8, 4)
    loss_fn = BarlowTwinsLoss(embedding_dim=-1)
    torch.testing.assert_close(loss_fn([z]), loss_fn(z))
    assert loss_fn(z.half()).dtype == torch.float32


@pytest.mark.parametrize("kwargs, x, match", [
    ({"embedding_dim": 4}, torch.randn(7, 4), r"\(2\*B, D\)"),
    ({"embedding_dim": 8}, torch.randn(8, 4), "embedding_dim=8"),
    ({"embedding_dim": 4}, [torch.randn(8, 4)] * 2, "list of 2"),
    ({"embedding_dim": 4}, torch.randn(2, 4), "at least 2 images"),
])
def test_bad_inputs_name_the_problem(kwargs, x, match):
    with pytest.raises(ValueError, match=match):
        BarlowTwinsLoss(**kwargs)(x)


@pytest.mark.parametrize("kwargs, match", [({"lambda_": -1.0}, "lambda_"),
                                           ({"scale_loss": 0.0}, "scale_loss"),
                                           ({"embedding_dim": 0}, "embedding_dim")])
def test_invalid_settings_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=f"LOSS.barlow_twins_loss.{match}"):
        BarlowTwinsLoss(**kwargs)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_compose_and_build(recipe):
    cfg = compose_config([f"config={recipe}"])
    assert cfg.LOSS.name == "barlow_twins_loss"
    loss = build_loss(cfg.LOSS)
    assert isinstance(loss, BarlowTwinsLoss)
    head_dims = cfg.MODEL.HEAD.PARAMS[-1][1]["dims"]
    assert loss.embedding_dim == head_dims[-1]
    get_method_class("barlow_twins_loss").infer_config(cfg, world_size=1)


def test_imagenet_recipe_keeps_vissl_hyperparameters():
    cfg = compose_config([f"config={RECIPES[0]}"])
    assert cfg.DATA.TRAIN.DATASET_NAMES == ["imagenet1k_folder"]
    assert cfg.DISTRIBUTED.NUM_NODES * cfg.DISTRIBUTED.NUM_PROC_PER_NODE * \
        cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA == 2048
    assert (cfg.LOSS.barlow_twins_loss.lambda_, cfg.LOSS.barlow_twins_loss.scale_loss) == (0.0051, 0.024)
    o = cfg.OPTIMIZER
    assert o.use_larc and not o.larc_config.clip and o.larc_config.trust_coefficient == 0.001
    assert (o.weight_decay, o.num_epochs) == (1.5e-6, 1000)
    assert o.param_schedulers.lr.auto_lr_scaling.base_value == 0.2
    assert cfg.MODEL.TRUNK.RESNETS.DEPTH == 50 and cfg.MODEL.HEAD.PARAMS[0][1]["dims"][-1] == 8192


def test_method_needs_exactly_two_views():
    cfg = compose_config([f"config={QUICK}",
                          "config.DATA.TRAIN.TRANSFORMS=[{name: ImgReplicatePil, num_times: 3}, "
                          "{name: ToTensor}]"])
    with pytest.raises(ValueError, match="exactly 2 views"):
        get_method_class("barlow_twins_loss").infer_config(cfg, world_size=1)


# ---- training --------------------------------------------------------------------------------

def _train(ckpt_dir, *overrides):
    from sslcore.engine.launcher import resolve
    from sslcore.engine.trainer import train

    cfg = resolve([f"config={QUICK}", f"config.CHECKPOINT.DIR={ckpt_dir}", *overrides])
    final = train(cfg, torch.device("cpu"))
    records = [json.loads(line) for line in (Path(ckpt_dir) / "stdout.json").read_text().splitlines()]
    return final, records


def test_quick_recipe_trains_and_resumes_mid_epoch(tmp_path):
    straight = tmp_path / "straight"
    final, records = _train(straight, "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=5")
    losses = [r["loss"] for r in records]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4
    state = torch.load(final, weights_only=True)
    assert state["iteration"] == 16 and state["classy_state_dict"]["optimizer"]["state"]

    resumed_dir = tmp_path / "resumed"  # restart from iteration 10 (epoch 2, 2 of 8 steps done)
    resumed_dir.mkdir()
    shutil.copy(straight / "model_iteration10.torch", resumed_dir)
    os.symlink("model_iteration10.torch", resumed_dir / "checkpoint.torch")
    resumed, after = _train(resumed_dir, "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=5")
    assert [r["iteration"] for r in after] == list(range(11, 17))
    for a, b in zip(records[10:], after):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    w1 = torch.load(final, weights_only=True)["classy_state_dict"]["base_model"]["model"]
    w2 = torch.load(resumed, weights_only=True)["classy_state_dict"]["base_model"]["model"]
    for part in ("trunk", "heads"):
        for key in w1[part]:
            torch.testing.assert_close(w1[part][key], w2[part][key], rtol=1e-5, atol=1e-6)


# GroupNorm trunk and a projector without BatchNorm: the forward pass of a sample does not depend
# on how the batch is split over processes. (The recipes' projector has BatchNorm, which on
# several processes needs SyncBatchNorm, a CUDA-only layer in torch.) A 10x lower LR than the
# recipe's: at LR 4 with trust 0.02 each LARC step moves weights by ~8% and float summation-order
# noise (1e-7) grows ~500x per step, which would hide a real difference among the noise.
DIST = [f"config={QUICK}", "config.MODEL.TRUNK.RESNETS.NORM=GroupNorm",
        "config.OPTIMIZER.param_schedulers.lr.start_value=0.4",
        "config.MODEL.HEAD.PARAMS=[[mlp,{dims:[64,64,32],use_bn:false,use_relu:true,use_bias:false}]]",
        "config.DATA.TRAIN.SYNTHETIC.NUM_SAMPLES=64", "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    assert_two_processes_train_like_one(tmp_path, DIST, 32)
