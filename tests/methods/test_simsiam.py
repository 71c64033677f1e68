"""SimSiam: the loss against the paper's symmetric negative cosine with stop-gradient, the projection
the method hands to the loss, the recipes, and a real 2-epoch run that learns and resumes."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch

from resume_helpers import rewind
from world_helpers import assert_two_processes_train_like_one
from sslcore.config import compose_config
from sslcore.config.loader import CONFIG_ROOT
from sslcore.data.transforms import build_transforms
from sslcore.engine.launcher import run_engine
from sslcore.losses import build_loss
from sslcore.losses.simsiam import SimSiamLoss
from sslcore.methods import get_method_class
from sslcore.methods.simsiam import SimSiam
from sslcore.models import build_model

QUICK = "pretrain/simsiam/quick_simsiam"


def reference_simsiam(p, z):
    """SimSiam's Algorithm 1: L = D(p1, z2)/2 + D(p2, z1)/2, D = -cosine, z detached."""
    batch = p.shape[0] // 2
    terms = []
    for i in range(batch):
        p1, p2, z1, z2 = p[i], p[batch + i], z[i].detach(), z[batch + i].detach()
        d12 = -(p1 @ z2) / (p1.norm() * z2.norm())
        d21 = -(p2 @ z1) / (p2.norm() * z1.norm())
        terms.append(d12 / 2 + d21 / 2)
    return torch.stack(terms).mean()


@pytest.mark.parametrize("batch, dim", [(1, 4), (5, 8), (8, 32)])
def test_loss_and_gradient_match_reference(batch, dim):
    torch.manual_seed(batch + dim)
    p = torch.randn(2 * batch, dim, dtype=torch.float64)
    z = torch.randn(2 * batch, dim, dtype=torch.float64)
    mine_p, ref_p = p.clone().requires_grad_(True), p.clone().requires_grad_(True)
    mine_z = z.clone().requires_grad_(True)
    mine = SimSiamLoss(embedding_dim=dim)(mine_p, mine_z)
    ref = reference_simsiam(ref_p, z)
    mine.backward()
    ref.backward()
    assert mine.item() == pytest.approx(ref.item(), rel=1e-10)
    torch.testing.assert_close(mine_p.grad, ref_p.grad, rtol=1e-8, atol=1e-12)
    assert mine_z.grad is None  # stop-gradient


def test_bounds_and_errors():
    z = torch.randn(6, 5)
    loss = SimSiamLoss(embedding_dim=5)
    swapped = torch.cat([z[3:], z[:3]])
    assert loss(swapped, z).item() == pytest.approx(-1.0, abs=1e-6)
    assert loss(-swapped, z).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="embedding_dim"):
        loss(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"\(2\*B, D\)"):
        loss(torch.randn(3, 5), torch.randn(3, 5))


def test_method_passes_the_projector_output_and_backpropagates_through_p_only():
    cfg = compose_config([f"config={QUICK}"])
    torch.manual_seed(0)
    model = build_model(cfg.MODEL)
    method = SimSiam(cfg, model, build_loss(cfg.LOSS))
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    task = SimpleNamespace(iteration=0, max_iteration=1)
    outputs = method.forward(task, {"data": [images]})
    features = model.trunk(images)[0]
    expected_z = model.heads[0](features)
    torch.testing.assert_close(method._projections[0], expected_z.detach())
    torch.testing.assert_close(outputs[0], model.heads[1](expected_z))
    loss = method.compute_loss(task, outputs, {"data": [images]})
    torch.testing.assert_close(loss, reference_simsiam(outputs[0], expected_z))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="ImgReplicatePil"):
        SimSiam.infer_config(compose_config([f"config={QUICK}", "config.DATA.TRAIN.TRANSFORMS=[]"]),
                             world_size=1)


RECIPES = sorted(str(p.relative_to(CONFIG_ROOT).with_suffix(""))
                 for p in (CONFIG_ROOT / "pretrain" / "simsiam").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes(recipe):
    cfg = compose_config([f"config={recipe}"])
    assert cfg.LOSS.name == "simsiam_loss"
    get_method_class("simsiam_loss").infer_config(cfg, world_size=1)
    build_transforms(cfg.DATA.TRAIN.TRANSFORMS)


def test_imagenet_recipe_carries_the_published_hyperparameters():
    cfg = compose_config(["config=pretrain/simsiam/simsiam_1node_resnet"])
    assert cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA * cfg.DISTRIBUTED.NUM_PROC_PER_NODE == 512
    lr = cfg.OPTIMIZER.param_schedulers.lr
    assert (lr.name, lr.auto_lr_scaling.base_value) == ("cosine", 0.05)
    assert cfg.OPTIMIZER.num_epochs == 100 and cfg.OPTIMIZER.weight_decay == 1e-4


def _records(ckpt_dir):
    return [json.loads(line) for line in (ckpt_dir / "stdout.json").read_text().splitlines()]


def test_quick_simsiam_learns_and_resumes_exactly(fmnist_small, tmp_path):
    """quick_simsiam on 128 real Fashion-MNIST images: 2 epochs, the negative cosine falls; a run
    resumed mid-epoch ends with the same weights."""
    common = [f"config={QUICK}", "config.DATA.TRAIN.DATA_SOURCES=[disk_filelist]",
              f"config.DATA.TRAIN.DATA_PATHS=[{fmnist_small}/train_images.npy]",
              "config.DATA.TRAIN.DATA_LIMIT=128", "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false",
              "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=5"]
    straight = tmp_path / "straight"
    final = run_engine(common + [f"config.CHECKPOINT.DIR={straight}"])
    losses = [r["loss"] for r in _records(straight)]
    assert len(losses) == 16 and all(math.isfinite(x) and -1 <= x <= 1 for x in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.2, losses

    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed, symlinks=True)
    rewind(resumed, "model_iteration10.torch")
    logged = len(_records(resumed))
    again = run_engine(common + [f"config.CHECKPOINT.DIR={resumed}"])
    after = _records(resumed)[logged:]
    assert [r["iteration"] for r in after] == list(range(11, 17))
    assert [r["loss"] for r in after] == pytest.approx(losses[10:], rel=1e-5, abs=1e-6)
    a = torch.load(final, weights_only=True)["classy_state_dict"]["base_model"]
    b = torch.load(again, weights_only=True)["classy_state_dict"]["base_model"]
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """The same global batch of 32 on 1 and on 2 gloo processes: same losses and weights after 4
    steps, so the stop-gradient and the mean over the global batch survive DDP (GroupNorm trunk,
    heads without BatchNorm, so the forward pass does not depend on the split)."""
    overrides = [f"config={QUICK}", "config.MODEL.TRUNK.RESNETS.NORM=GroupNorm",
                 "config.MODEL.HEAD.PARAMS=[[mlp,{dims:[64,128,32],use_bn:false,use_relu:true}],"
                 "[mlp,{dims:[32,16,32],use_bn:false,use_relu:true}]]",
                 "config.DATA.TRAIN.SYNTHETIC.NUM_SAMPLES=64",
                 "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"]
    assert_two_processes_train_like_one(tmp_path, overrides, 32)
