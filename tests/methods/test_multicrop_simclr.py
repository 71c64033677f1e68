"""Multi-crop SimCLR: the loss against a plain loop, 2 processes = 1, the multi-resolution forward,
recipes, a 2-epoch training run and its exact mid-epoch resume."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from world_helpers import assert_two_processes_train_like_one
from sslcore.config import compose_config
from sslcore.losses import build_loss
from sslcore.losses.multicrop_simclr import MultiCropSimCLRInfoNCELoss
from sslcore.losses.simclr_info_nce import SimCLRInfoNCELoss
from sslcore.methods.multicrop import count_crops, forward_crops, split_crops
from sslcore.models import build_model

QUICK = "pretrain/simclr/quick_multicrop_simclr"


def reference_multicrop_info_nce(embedding, num_crops, temperature):
    """One term per (anchor, positive): the positive against the crops of every other image."""
    z = embedding / embedding.norm(dim=1, keepdim=True)
    n = z.shape[0]
    batch = n // num_crops
    terms = []
    for a in range(n):
        negatives = [k for k in range(n) if k % batch != a % batch]
        neg = sum(torch.exp(z[a] @ z[k] / temperature) for k in negatives) if negatives else 0.0
        for p in range(n):
            if p != a and p % batch == a % batch:
                pos = torch.exp(z[a] @ z[p] / temperature)
                terms.append(-torch.log(pos / (pos + neg)))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("num_crops", [2, 4])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_loss_and_gradient_match_reference(num_crops, batch, temperature):
    torch.manual_seed(num_crops * 10 + batch)
    data = torch.randn(num_crops * batch, 8, dtype=torch.float64)
    mine_in, ref_in = data.clone().requires_grad_(True), data.clone().requires_grad_(True)
    mine = MultiCropSimCLRInfoNCELoss(temperature=temperature, num_crops=num_crops)(mine_in)
    ref = reference_multicrop_info_nce(ref_in, num_crops, temperature)
    mine.backward()
    ref.backward()
    assert mine.item() == pytest.approx(ref.item(), rel=1e-10)
    torch.testing.assert_close(mine_in.grad, ref_in.grad, rtol=1e-8, atol=1e-12)


def test_two_crops_is_simclr_and_crop_order_matters():
    torch.manual_seed(3)
    z = torch.randn(2 * 6, 16, dtype=torch.float64)
    multi = MultiCropSimCLRInfoNCELoss(temperature=0.2, num_crops=2)
    torch.testing.assert_close(multi(z), SimCLRInfoNCELoss(temperature=0.2)(z, num_views=2))
    four = MultiCropSimCLRInfoNCELoss(temperature=0.2, num_crops=4)
    w = torch.randn(4, 3, 16)  # (V, B, D)
    assert not torch.isclose(four(w.reshape(12, 16)), four(w.transpose(0, 1).reshape(12, 16)))


@pytest.mark.parametrize("kwargs, shape, match", [
    ({"temperature": 0.0}, None, "temperature"),
    ({"num_crops": 1}, None, "num_crops"),
    ({"buffer_params": {"queue": 1}}, None, "queue"),
    ({"num_crops": 4}, (6, 4), "crop blocks"),
    ({"num_crops": 2, "buffer_params": {"embedding_dim": 128}}, (4, 8), "embedding_dim"),
    ({"num_crops": 2, "buffer_params": {"effective_batch_size": 4}}, (4, 8), "effective_batch_size"),
])
def test_invalid_settings_raise(kwargs, shape, match):
    if shape is None:
        with pytest.raises(ValueError, match=match):
            MultiCropSimCLRInfoNCELoss(**kwargs)
        return
    with pytest.raises(ValueError, match=match):
        MultiCropSimCLRInfoNCELoss(**kwargs)(torch.randn(*shape))


# ---- multi-resolution forward --------------------------------------------------------------

def test_forward_runs_trunk_per_resolution_and_heads_once_on_every_crop():
    torch.manual_seed(0)
    model = build_model(compose_config([f"config={QUICK}"]).MODEL).train()
    large, small = torch.randn(2 * 3, 3, 32, 32), torch.randn(2 * 3, 3, 16, 16)
    crops = split_crops([large, small], num_crops=4)
    assert [tuple(c.shape[:1]) for c in crops] == [(3,)] * 4
    state = {k: v.clone() for k, v in model.state_dict().items()}
    (out,) = forward_crops(model, crops)
    model.load_state_dict(state)  # same BatchNorm running statistics for the manual pass
    feats = torch.cat([model.trunk(large)[0], model.trunk(small)[0]])
    expected = model.heads[0](feats)  # the head's BatchNorm sees all 12 rows at once
    torch.testing.assert_close(out, expected)
    per_group = torch.cat([model.heads[0](model.trunk(large)[0]), model.heads[0](model.trunk(small)[0])])
    assert not torch.allclose(out, per_group)
    with pytest.raises(ValueError, match="num_crops"):
        split_crops([large, small], num_crops=5)


def test_count_crops_reads_the_transforms():
    assert count_crops([{"name": "ImgPilToMultiCrop", "total_num_crops": 6}]) == 6
    assert count_crops([{"name": "ImgReplicatePil", "num_times": 3}]) == 3
    assert count_crops([{"name": "ToTensor"}]) == 1


# ---- recipes -------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe, crops", [("pretrain/simclr/multicrop_simclr_8node_resnet", 6),
                                           ("pretrain/simclr/multicrop_simclr_fashion_mnist", 6),
                                           (QUICK, 4)])
def test_recipes_compose_and_infer(recipe, crops):
    from sslcore.config.infer import infer_config

    cfg, _ = infer_config(compose_config([f"config={recipe}"]), world_size=4, local_world_size=4,
                          cuda_available=False)
    section = cfg.LOSS.multicrop_simclr_info_nce_loss
    assert section.num_crops == crops and section.buffer_params.world_size == 4
    assert section.buffer_params.effective_batch_size == 4 * cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA
    assert build_loss(cfg.LOSS).num_crops == crops


# ---- training ------------------------------------------------------------------------------

FAST_LR = ["config.OPTIMIZER.param_schedulers.lr.auto_lr_scaling.auto_scale=false"]


def _train(ckpt_dir, *overrides):
    from sslcore.engine.launcher import resolve
    from sslcore.engine.trainer import train

    cfg = resolve([f"config={QUICK}", f"config.CHECKPOINT.DIR={ckpt_dir}", *FAST_LR, *overrides])
    final = train(cfg, torch.device("cpu"))
    return final, [json.loads(line) for line in (Path(ckpt_dir) / "stdout.json").read_text().splitlines()]


def test_quick_recipe_trains_and_resumes_mid_epoch_exactly(tmp_path):
    final, records = _train(tmp_path / "straight")
    losses = [r["loss"] for r in records]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1

    run = tmp_path / "interrupted"
    _train(run, "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=3", "config.OPTIMIZER.num_epochs=2")
    mid = run / "model_iteration6.torch"
    for f in run.glob("model_final*"):
        f.unlink()
    (run / "checkpoint.torch").unlink()
    os.symlink(mid.name, run / "checkpoint.torch")
    resumed, _ = _train(run, "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=3")
    a = torch.load(final, weights_only=True)["classy_state_dict"]["base_model"]["model"]["trunk"]
    b = torch.load(resumed, weights_only=True)["classy_state_dict"]["base_model"]["model"]["trunk"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


# ---- two processes -------------------------------------------------------------------------

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs():
    gen = torch.Generator().manual_seed(7)
    return (torch.randn(3, WORLD * 2, 6, generator=gen, dtype=torch.float64),  # (V, W*B, 6)
            torch.randn(5, 6, generator=gen, dtype=torch.float64))


def _rank_run(rank, world):
    features, weight = _inputs()
    share = WORLD * 2 // world
    local = features[:, rank * share:(rank + 1) * share].reshape(-1, 6).clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    loss = MultiCropSimCLRInfoNCELoss(temperature=0.3, num_crops=3)(local @ weight.t())
    loss.backward()
    if world > 1:
        dist.all_reduce(weight.grad)
        weight.grad /= world  # DDP's averaging
    return loss.detach(), weight.grad


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.save(_rank_run(rank, WORLD), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_one_process(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    loss, grad = _rank_run(0, 1)
    torch.testing.assert_close(sum(r[0] for r in ranks) / WORLD, loss)
    for result in ranks:
        torch.testing.assert_close(result[1], grad)


@pytest.mark.slow
def test_two_process_training_matches_one_process(tmp_path):
    """The whole method: the same global batch of 16 images (2 large + small crops each) on 1 and
    on 2 gloo processes gives the same losses and weights after 4 steps (GroupNorm trunk,
    projector without BatchNorm, so the forward pass does not depend on the split)."""
    overrides = ["config=pretrain/simclr/quick_multicrop_simclr", "config.MODEL.TRUNK.RESNETS.NORM=GroupNorm",
                 "config.MODEL.HEAD.PARAMS=[[mlp,{dims:[64,64,32],use_bn:false,use_relu:true}]]",
                 "config.DATA.TRAIN.SYNTHETIC.NUM_SAMPLES=32",
                 "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"]
    assert_two_processes_train_like_one(tmp_path, overrides, 16)
