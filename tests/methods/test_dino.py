"""DINO: the loss against the paper's formula, the teacher-temperature schedule, the center on one
and two gloo ranks, the dino_head, teacher and student on multi-crop (ResNet and ViT trunks), the
recipes, and a real 2-epoch run that learns and resumes exactly."""

from __future__ import annotations

import json
import math
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from resume_helpers import rewind
from world_helpers import assert_two_processes_train_like_one
from sslcore.config import compose_config
from sslcore.config.loader import CONFIG_ROOT
from sslcore.data.transforms import build_transforms
from sslcore.engine.launcher import run_engine
from sslcore.engine.temp_frozen_params import TempFrozenParams
from sslcore.losses import build_loss
from sslcore.losses.dino import DINOLoss, teacher_temperature
from sslcore.methods import get_method_class
from sslcore.methods.dino import DINO
from sslcore.methods.multicrop import split_crops
from sslcore.models import build_model
from sslcore.models.heads import build_head
from sslcore.models.heads.dino_head import DINOHead
from sslcore.optim.optimizer import build_weight_decay_schedule

QUICK = "pretrain/dino/quick_dino"


def reference_dino(student, teacher, center, crops_for_teacher, num_crops, t_s, t_t):
    """DINO's Algorithm 1 written out: for every teacher crop u and student crop v != u, the mean
    over samples of -sum_k softmax((t_u - c) / t_t)_k log softmax(s_v / t_s)_k; averaged over pairs."""
    batch = teacher.shape[0] // len(crops_for_teacher)
    pair_losses = []
    for j, u in enumerate(crops_for_teacher):
        for v in range(num_crops):
            if v == u:
                continue
            per_sample = []
            for i in range(batch):
                t = teacher[j * batch + i].detach()
                s = student[v * batch + i]
                p_t = torch.exp((t - center[0]) / t_t) / torch.exp((t - center[0]) / t_t).sum()
                log_p_s = s / t_s - torch.log(torch.exp(s / t_s).sum())
                per_sample.append(-(p_t * log_p_s).sum())
            pair_losses.append(torch.stack(per_sample).mean())
    return torch.stack(pair_losses).mean()


@pytest.mark.parametrize("num_crops, crops_for_teacher, batch", [(2, [0, 1], 3), (4, [0, 1], 2),
                                                                 (3, [1], 4)])
def test_loss_and_gradient_match_reference(num_crops, crops_for_teacher, batch):
    torch.manual_seed(num_crops * 10 + batch)
    k = 7
    loss_fn = DINOLoss(output_dim=k, crops_for_teacher=crops_for_teacher, num_crops=num_crops,
                       student_temp=0.1).double()
    loss_fn.center.copy_(torch.randn(1, k))
    student = torch.randn(num_crops * batch, k, dtype=torch.float64)
    teacher = torch.randn(len(crops_for_teacher) * batch, k, dtype=torch.float64)
    mine_s, ref_s = student.clone().requires_grad_(True), student.clone().requires_grad_(True)
    mine_t = teacher.clone().requires_grad_(True)
    mine = loss_fn(mine_s, mine_t, teacher_temp=0.05)
    ref = reference_dino(ref_s, teacher, loss_fn.center, crops_for_teacher, num_crops, 0.1, 0.05)
    mine.backward()
    ref.backward()
    assert mine.item() == pytest.approx(ref.item(), rel=1e-10)
    torch.testing.assert_close(mine_s.grad, ref_s.grad, rtol=1e-8, atol=1e-12)
    assert mine_t.grad is None


def test_teacher_temperature_is_a_linear_warm_up_then_flat():
    expected = torch.cat([torch.linspace(0.04, 0.07, 30), torch.full((20,), 0.07)])
    got = torch.tensor([teacher_temperature(i, 0.04, 0.07, 30) for i in range(50)])
    torch.testing.assert_close(got, expected.to(got.dtype))
    assert teacher_temperature(0, 0.04, 0.07, 0) == 0.07
    assert DINOLoss(output_dim=3, teacher_temp_warmup_iters=30).teacher_temp(15) == pytest.approx(
        0.04 + 0.03 * 15 / 29)


def test_center_is_an_ema_of_the_teacher_means():
    loss_fn = DINOLoss(output_dim=3, ema_center=0.9)
    t1, t2 = torch.randn(4, 3), torch.randn(4, 3)
    loss_fn.update_center(t1)
    torch.testing.assert_close(loss_fn.center, 0.1 * t1.mean(0, keepdim=True))
    loss_fn.update_center(t2)
    torch.testing.assert_close(loss_fn.center, 0.9 * 0.1 * t1.mean(0, keepdim=True)
                               + 0.1 * t2.mean(0, keepdim=True))


@pytest.mark.parametrize("kwargs, match", [
    ({"crops_for_teacher": [0, 0]}, "crops_for_teacher"), ({"student_temp": 0.0}, "temp"),
    ({"ema_center": 1.5}, "ema_center"), ({"num_crops": 2, "crops_for_teacher": [0, 2]}, "num_crops"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DINOLoss(output_dim=4, **kwargs)


def test_inputs_that_do_not_fit_the_crops_raise():
    loss_fn = DINOLoss(output_dim=4, num_crops=4)
    with pytest.raises(ValueError, match="num_crops"):
        loss_fn(torch.randn(6, 4), torch.randn(4, 4), teacher_temp=0.04)  # 3 crops of 2
    with pytest.raises(ValueError, match="output_dim"):
        loss_fn(torch.randn(8, 5), torch.randn(4, 5), teacher_temp=0.04)


# ---- the center on two gloo ranks ------------------------------------------------------------

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _crops():
    """Student logits (3 crops, 2 samples, K=5) and teacher logits (2 crops, 2 samples, 5)."""
    gen = torch.Generator().manual_seed(3)
    return torch.randn(3, 2, 5, generator=gen), torch.randn(2, 2, 5, generator=gen)


def _center_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        student, teacher = _crops()
        loss_fn = DINOLoss(output_dim=5, num_crops=3, crops_for_teacher=[0, 1])
        mine_s = student[:, rank]  # (3 crops, 5): this rank's one sample, crop-major
        mine_t = teacher[:, rank]
        loss = loss_fn(mine_s, mine_t, teacher_temp=0.04)
        loss_fn.update_center(mine_t)
        torch.save({"loss": loss, "center": loss_fn.center}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_center_and_loss_match_one_process(tmp_path):
    # fork: children inherit the imports instead of re-importing torch and sslcore
    mp.start_processes(_center_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    student, teacher = _crops()
    loss_fn = DINOLoss(output_dim=5, num_crops=3, crops_for_teacher=[0, 1])
    loss = loss_fn(student.reshape(6, 5), teacher.reshape(4, 5), teacher_temp=0.04)
    loss_fn.update_center(teacher.reshape(4, 5))
    for r in ranks:
        torch.testing.assert_close(r["center"], loss_fn.center)
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, loss)


# ---- the head ---------------------------------------------------------------------------------

def test_dino_head_shapes_weight_norm_and_checkpoint_names():
    head = build_head("dino_head", {"in_dim": 12, "num_clusters": [20], "hidden_dim": 16,
                                    "bottleneck_dim": 8})
    x = torch.randn(5, 12, 1, 1)
    assert head(x).shape == (5, 20)
    keys = set(head.state_dict())
    assert {"prototypes0.weight_g", "prototypes0.weight_v", "mlp.0.weight", "mlp.4.weight"} <= keys
    assert not head.prototypes0.weight_g.requires_grad  # normalize_last_layer (default True)
    torch.testing.assert_close(head.prototypes0.weight().norm(dim=1), torch.ones(20))
    # logits = normalised bottleneck . unit prototypes: cosines in [-1, 1]
    assert head(x).abs().max() <= 1 + 1e-6
    free = DINOHead(in_dim=12, num_clusters=[20], normalize_last_layer=False, num_layers=1, use_bn=True)
    assert free.prototypes0.weight_g.requires_grad and len(free.mlp) == 1
    with torch.no_grad():
        free.prototypes0.weight_g.mul_(3.0)
    torch.testing.assert_close(free.prototypes0.weight().norm(dim=1), torch.full((20,), 3.0))
    with pytest.raises(ValueError, match="num_clusters"):
        DINOHead(in_dim=4, num_clusters=[3, 3])


# ---- the method on multi-crop ----------------------------------------------------------------

def _multicrop_batch(batch=4):
    gen = torch.Generator().manual_seed(0)
    return {"data": [torch.rand(2 * batch, 3, 32, 32, generator=gen),
                     torch.rand(2 * batch, 3, 16, 16, generator=gen)]}


def test_split_crops_follows_the_collated_order():
    data = _multicrop_batch(batch=3)["data"]
    crops = split_crops(data, 4)
    assert [tuple(c.shape) for c in crops] == [(3, 3, 32, 32)] * 2 + [(3, 3, 16, 16)] * 2
    assert torch.equal(crops[1], data[0][3:]) and torch.equal(crops[2], data[1][:3])
    with pytest.raises(ValueError, match="num_crops"):
        split_crops(data, 5)


def test_teacher_sees_the_global_crops_and_follows_student_and_center():
    cfg = compose_config([f"config={QUICK}", "config.LOSS.dino_loss.num_crops=4",
                          "config.LOSS.dino_loss.output_dim=64"])
    torch.manual_seed(0)
    model = build_model(cfg.MODEL)
    method = DINO(cfg, model, build_loss(cfg.LOSS))
    teacher = method.teacher.encoder
    batch = _multicrop_batch()
    task = SimpleNamespace(iteration=2, max_iteration=16)
    expected_teacher = teacher(batch["data"][0])[0].detach()  # crops 0 and 1: the 32 px tensor
    outputs = method.forward(task, batch)
    torch.testing.assert_close(method._teacher_output, expected_teacher)
    assert outputs[0].shape == (16, 64)
    loss = method.compute_loss(task, outputs, batch)
    ref = reference_dino(outputs[0], expected_teacher, torch.zeros(1, 64), [0, 1], 4, 0.1,
                         0.04 + 0.03 * 2 / 7)
    torch.testing.assert_close(loss, ref)
    old = [p.detach().clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    method.on_update(task)
    m = 1 - (1 - 0.99) * (math.cos(math.pi * 2 / 16) + 1) / 2
    for new, prev, src in zip(teacher.parameters(), old, model.parameters()):
        torch.testing.assert_close(new, m * prev + (1 - m) * src.detach())
    torch.testing.assert_close(method.loss.center, 0.1 * expected_teacher.mean(0, keepdim=True))
    fresh = DINO(cfg, build_model(cfg.MODEL), build_loss(cfg.LOSS))
    fresh.load_state_dict(method.state_dict())
    torch.testing.assert_close(fresh.loss.center, method.loss.center)
    for a, b in zip(fresh.teacher.encoder.parameters(), teacher.parameters()):
        torch.testing.assert_close(a, b)


def test_prototypes_stay_frozen_for_the_configured_iterations():
    """The recipes' TEMP_FROZEN_PARAMS_ITER_MAP names the weight-normalised prototypes (weight_v)."""
    cfg = compose_config([f"config={QUICK}", "config.LOSS.dino_loss.num_crops=4",
                          "config.LOSS.dino_loss.output_dim=64",
                          "config.MODEL.TEMP_FROZEN_PARAMS_ITER_MAP=[[module.heads.0.prototypes0.weight_v,3]]"])
    model = build_model(cfg.MODEL)
    method = DINO(cfg, model, build_loss(cfg.LOSS))
    frozen_params = TempFrozenParams.from_config(cfg.MODEL.TEMP_FROZEN_PARAMS_ITER_MAP, model)
    batch = _multicrop_batch()
    for iteration, frozen in ((2, True), (3, False)):
        task = SimpleNamespace(iteration=iteration, max_iteration=16)
        model.zero_grad()
        method.compute_loss(task, method.forward(task, batch), batch).backward()
        frozen_params.apply(model, iteration)
        assert (model.heads[0].prototypes0.weight_v.grad is None) == frozen
        assert model.heads[0].mlp[0].weight.grad is not None


def test_vit_teacher_runs_without_stochastic_depth():
    cfg = compose_config([
        f"config={QUICK}", "config.MODEL.TRUNK.NAME=vision_transformer",
        "config.MODEL.TRUNK.VISION_TRANSFORMERS.IMAGE_SIZE=32",
        "config.MODEL.TRUNK.VISION_TRANSFORMERS.PATCH_SIZE=8",
        "config.MODEL.TRUNK.VISION_TRANSFORMERS.HIDDEN_DIM=32",
        "config.MODEL.TRUNK.VISION_TRANSFORMERS.NUM_LAYERS=2",
        "config.MODEL.TRUNK.VISION_TRANSFORMERS.NUM_HEADS=2",
        "config.MODEL.TRUNK.VISION_TRANSFORMERS.MLP_DIM=64",
        "config.MODEL.TRUNK.VISION_TRANSFORMERS.DROP_PATH_RATE=0.5",
        "config.MODEL.HEAD.PARAMS=[[dino_head,{in_dim:32,num_clusters:[16],hidden_dim:32,bottleneck_dim:8}]]",
        "config.LOSS.dino_loss.num_crops=4", "config.LOSS.dino_loss.output_dim=16"])
    model = build_model(cfg.MODEL)
    method = DINO(cfg, model, build_loss(cfg.LOSS))
    rates = lambda m: [x.drop_prob for x in m.modules() if hasattr(x, "drop_prob")]  # noqa: E731
    assert max(rates(model)) == 0.5 and rates(method.teacher.encoder) == [0.0] * len(rates(model))
    batch = _multicrop_batch(batch=2)
    task = SimpleNamespace(iteration=0, max_iteration=4)
    outputs = method.forward(task, batch)
    assert outputs[0].shape == (8, 16) and method._teacher_output.shape == (4, 16)
    # the teacher is deterministic even in training mode
    again = method.teacher(batch["data"][0])[0]
    torch.testing.assert_close(again, method._teacher_output)
    assert torch.isfinite(method.compute_loss(task, outputs, batch))


def test_infer_config_takes_crops_and_prototypes_from_the_config():
    cfg = compose_config([f"config={QUICK}"])
    assert DINO.infer_config(cfg, world_size=2) == {"LOSS.dino_loss.num_crops": 4,
                                                    "LOSS.dino_loss.output_dim": 64}
    with pytest.raises(ValueError, match="crops_for_teacher"):
        DINO.infer_config(compose_config([f"config={QUICK}",
                                          "config.LOSS.dino_loss.crops_for_teacher=[0,4]"]),
                          world_size=1)


RECIPES = sorted(str(p.relative_to(CONFIG_ROOT).with_suffix(""))
                 for p in (CONFIG_ROOT / "pretrain" / "dino").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes(recipe):
    cfg = compose_config([f"config={recipe}"])
    assert cfg.LOSS.name == "dino_loss"
    get_method_class("dino_loss").infer_config(cfg, world_size=1)
    build_transforms(cfg.DATA.TRAIN.TRANSFORMS)


def test_deit_recipe_is_vissls_dino_deit_s16():
    cfg = compose_config(["config=pretrain/dino/dino_16gpus_deits16"])
    vit = cfg.MODEL.TRUNK.VISION_TRANSFORMERS
    assert cfg.MODEL.TRUNK.NAME == "vision_transformer"
    assert (vit.PATCH_SIZE, vit.HIDDEN_DIM, vit.NUM_LAYERS, vit.NUM_HEADS) == (16, 384, 12, 6)
    d = cfg.DISTRIBUTED
    assert cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA * d.NUM_NODES * d.NUM_PROC_PER_NODE == 1024
    inferred = DINO.infer_config(cfg, world_size=16)
    assert inferred == {"LOSS.dino_loss.num_crops": 10, "LOSS.dino_loss.output_dim": 65536}
    assert cfg.OPTIMIZER.name == "adamw" and cfg.LOSS.dino_loss.teacher_temp_warmup_iters == 37530
    wd = build_weight_decay_schedule(cfg.OPTIMIZER)
    assert (wd(0.0), wd(0.5), wd(299 / 300)) == pytest.approx((0.04, 0.22, 0.4), abs=1e-5)


def _records(ckpt_dir):
    return [json.loads(line) for line in (ckpt_dir / "stdout.json").read_text().splitlines()]


def test_quick_dino_learns_and_resumes_exactly(fmnist_small, tmp_path):
    """quick_dino on 128 real Fashion-MNIST images: 2 epochs with a falling loss; a run resumed
    mid-epoch ends with the same weights, teacher and center."""
    common = [f"config={QUICK}", "config.DATA.TRAIN.DATA_SOURCES=[disk_filelist]",
              f"config.DATA.TRAIN.DATA_PATHS=[{fmnist_small}/train_images.npy]",
              "config.DATA.TRAIN.DATA_LIMIT=128", "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false",
              "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=5"]
    straight = tmp_path / "straight"
    final = run_engine(common + [f"config.CHECKPOINT.DIR={straight}"])
    losses = [r["loss"] for r in _records(straight)]
    assert len(losses) == 16 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3, losses

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
    assert set(a["loss"]) == {"loss", "teacher"} and a["loss"]["loss"]["center"].abs().sum() > 0


@pytest.mark.slow
def test_two_process_training_matches_one_process(tmp_path):
    """The whole method: the same global batch of 16 on 1 and on 2 gloo processes gives the same
    losses, student, teacher and center after 4 steps (GroupNorm trunk, dino_head without
    BatchNorm, so the forward pass does not depend on the split)."""
    overrides = [f"config={QUICK}", "config.MODEL.TRUNK.RESNETS.NORM=GroupNorm",
                 "config.MODEL.HEAD.PARAMS=[[dino_head,{in_dim:64,num_clusters:[64],hidden_dim:128,"
                 "bottleneck_dim:32,use_bn:false,normalize_last_layer:true}]]",
                 "config.DATA.TRAIN.SYNTHETIC.NUM_SAMPLES=64", "config.OPTIMIZER.num_epochs=1",
                 "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"]
    assert_two_processes_train_like_one(tmp_path, overrides, 16, method_state=True)
