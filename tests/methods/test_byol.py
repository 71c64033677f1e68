"""BYOL: the loss against the paper's normalised MSE, the target network (no predictor, cosine EMA),
the recipes, and a real 2-epoch run that learns and resumes exactly."""

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
from sslcore.losses.byol import BYOLLoss
from sslcore.methods import get_method_class
from sslcore.methods.byol import BYOL
from sslcore.models import build_model

QUICK = "pretrain/byol/quick_byol"


def reference_byol(prediction, target):
    """BYOL's loss written out: for each sample, ||p1/|p1| - z2/|z2|||^2 + ||p2/|p2| - z1/|z1|||^2."""
    batch = prediction.shape[0] // 2
    total = []
    for i in range(batch):
        p1, p2 = prediction[i], prediction[batch + i]
        z1, z2 = target[i].detach(), target[batch + i].detach()
        total.append(((p1 / p1.norm() - z2 / z2.norm()) ** 2).sum()
                     + ((p2 / p2.norm() - z1 / z1.norm()) ** 2).sum())
    return torch.stack(total).mean()


@pytest.mark.parametrize("batch, dim", [(1, 3), (4, 8), (7, 16)])
def test_loss_and_gradient_match_reference(batch, dim):
    torch.manual_seed(batch * dim)
    p = torch.randn(2 * batch, dim, dtype=torch.float64)
    z = torch.randn(2 * batch, dim, dtype=torch.float64)
    mine_p, ref_p = p.clone().requires_grad_(True), p.clone().requires_grad_(True)
    mine_z = z.clone().requires_grad_(True)
    mine = BYOLLoss(embedding_dim=dim)(mine_p, mine_z)
    ref = reference_byol(ref_p, z)
    mine.backward()
    ref.backward()
    assert mine.item() == pytest.approx(ref.item(), rel=1e-10)
    torch.testing.assert_close(mine_p.grad, ref_p.grad, rtol=1e-8, atol=1e-12)
    assert mine_z.grad is None  # the target is a constant for the online network


def test_closed_forms_and_scale_invariance():
    z = torch.randn(6, 5)
    loss = BYOLLoss(embedding_dim=-1)
    swapped = torch.cat([z[3:], z[:3]])  # p1 = z2, p2 = z1: perfect predictions
    assert loss(swapped, z).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(-swapped, z).item() == pytest.approx(8.0, rel=1e-6)  # opposite: 4 per term
    torch.testing.assert_close(loss(3.0 * swapped + 0.1, z), loss(swapped + 0.1 / 3.0, z))


@pytest.mark.parametrize("p_shape, z_shape, match", [
    ((5, 4), (5, 4), r"\(2\*B, D\)"), ((4, 4), (6, 4), "same shape"), ((4, 3), (4, 3), "embedding_dim"),
])
def test_bad_inputs_name_the_problem(p_shape, z_shape, match):
    with pytest.raises(ValueError, match=match):
        BYOLLoss(embedding_dim=4)(torch.randn(*p_shape), torch.randn(*z_shape))
    with pytest.raises(ValueError, match="momentum"):
        BYOLLoss(momentum=1.5)


def _tiny(base_momentum=0.9):
    cfg = compose_config([f"config={QUICK}", f"config.LOSS.byol_loss.momentum={base_momentum}"])
    torch.manual_seed(0)
    model = build_model(cfg.MODEL)
    return BYOL(cfg, model, build_loss(cfg.LOSS)), model


def test_target_is_trunk_and_projector_following_the_cosine_schedule():
    method, model = _tiny(base_momentum=0.9)
    target = method.target.encoder
    assert len(target.heads) == len(model.heads) - 1  # no predictor
    online = [p for n, p in model.named_parameters() if not n.startswith(f"heads.{len(model.heads) - 1}.")]
    assert len(list(target.parameters())) == len(online)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), online))

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    task = SimpleNamespace(iteration=0, max_iteration=3)
    for step in range(3):
        images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(step))
        batch = {"data": [images]}
        expected_target = target(images)[0].detach()
        outputs = method.forward(task, batch)
        torch.testing.assert_close(method._target_output, expected_target)
        assert outputs[0].shape == (8, 32) and outputs[0].requires_grad
        loss = method.compute_loss(task, outputs, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        old = [p.detach().clone() for p in target.parameters()]
        method.on_update(task)
        tau = 1 - (1 - 0.9) * (math.cos(math.pi * step / 3) + 1) / 2  # BYOL Sec. 3.2
        for new, prev, src in zip(target.parameters(), old, online):
            torch.testing.assert_close(new, tau * prev + (1 - tau) * src.detach())
        task.iteration += 1


def test_state_round_trip_and_config_checks():
    method, _ = _tiny()
    with torch.no_grad():
        next(method.target.encoder.parameters()).add_(1.0)
    fresh, _ = _tiny()
    fresh.load_state_dict(method.state_dict())
    for a, b in zip(fresh.target.encoder.parameters(), method.target.encoder.parameters()):
        torch.testing.assert_close(a, b)
    cfg = compose_config([f"config={QUICK}"])
    with pytest.raises(ValueError, match="ImgReplicatePil"):
        BYOL.infer_config(compose_config([f"config={QUICK}", "config.DATA.TRAIN.TRANSFORMS=[]"]),
                          world_size=1)
    one_head = compose_config([f"config={QUICK}", "config.MODEL.HEAD.PARAMS=[[mlp,{dims:[64,32]}]]"])
    with pytest.raises(ValueError, match="predictor"):
        BYOL(one_head, build_model(one_head.MODEL), build_loss(cfg.LOSS))


RECIPES = sorted(str(p.relative_to(CONFIG_ROOT).with_suffix(""))
                 for p in (CONFIG_ROOT / "pretrain" / "byol").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes(recipe):
    cfg = compose_config([f"config={recipe}"])
    assert cfg.LOSS.name == "byol_loss" and len(cfg.MODEL.HEAD.PARAMS) == 2
    get_method_class("byol_loss").infer_config(cfg, world_size=1)
    build_transforms(cfg.DATA.TRAIN.TRANSFORMS)


def test_imagenet_recipe_carries_the_published_hyperparameters():
    cfg = compose_config(["config=pretrain/byol/byol_8node_resnet"])
    d = cfg.DISTRIBUTED
    assert cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA * d.NUM_NODES * d.NUM_PROC_PER_NODE == 4096
    assert cfg.LOSS.byol_loss.momentum == 0.996 and cfg.OPTIMIZER.use_larc
    assert cfg.OPTIMIZER.num_epochs == 300 and not cfg.OPTIMIZER.larc_config.clip


def _records(ckpt_dir):
    return [json.loads(line) for line in (ckpt_dir / "stdout.json").read_text().splitlines()]


def test_quick_byol_learns_and_resumes_exactly(fmnist_small, tmp_path):
    """quick_byol on 128 real Fashion-MNIST images: 2 epochs with a falling loss; a run resumed
    mid-epoch ends with the same weights and target network."""
    common = [f"config={QUICK}", "config.DATA.TRAIN.DATA_SOURCES=[disk_filelist]",
              f"config.DATA.TRAIN.DATA_PATHS=[{fmnist_small}/train_images.npy]",
              "config.DATA.TRAIN.DATA_LIMIT=128", "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false",
              "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=5"]
    straight = tmp_path / "straight"
    final = run_engine(common + [f"config.CHECKPOINT.DIR={straight}"])
    losses = [r["loss"] for r in _records(straight)]
    assert len(losses) == 16 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses

    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed, symlinks=True)
    rewind(resumed, "model_iteration10.torch")
    logged = len(_records(resumed))
    again = run_engine(common + [f"config.CHECKPOINT.DIR={resumed}"])
    after = _records(resumed)[logged:]
    assert [r["iteration"] for r in after] == list(range(11, 17))
    assert [r["loss"] for r in after] == pytest.approx(losses[10:], rel=1e-5)
    a = torch.load(final, weights_only=True)["classy_state_dict"]
    b = torch.load(again, weights_only=True)["classy_state_dict"]
    torch.testing.assert_close(b["base_model"], a["base_model"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b["loss"], a["loss"], rtol=1e-5, atol=1e-6)
    assert "target" in a["loss"]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """The same global batch of 32 on 1 and on 2 gloo processes: same losses, same online network
    and the same momentum target after 4 steps (GroupNorm trunk, heads without BatchNorm, so the
    forward pass does not depend on the split)."""
    overrides = [f"config={QUICK}", "config.MODEL.TRUNK.RESNETS.NORM=GroupNorm",
                 "config.MODEL.HEAD.PARAMS=[[mlp,{dims:[64,128,32],use_bn:false,use_relu:true}],"
                 "[mlp,{dims:[32,128,32],use_bn:false,use_relu:true}]]",
                 "config.DATA.TRAIN.SYNTHETIC.NUM_SAMPLES=64", "config.OPTIMIZER.num_epochs=2",
                 "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"]
    assert_two_processes_train_like_one(tmp_path, overrides, 32, method_state=True)
